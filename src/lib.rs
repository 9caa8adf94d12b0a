//! condo: a web server for shared hosting that runs every site's code, and reads every
//! site's files, as that site's owner.
//!
//! Module map (see README.md for the process model):
//! - [`master`]: the root broker — binds listeners, opens logs, starts and supervises
//!   the other processes, passes fds. The only code that runs as root.
//! - [`dispatcher`]: unprivileged; accepts clients, parses request heads, routes by Host,
//!   hands connections or requests to tenant workers.
//! - [`worker`]: one per tenant, as the tenant's uid; serves the tenant's sites.
//! - [`sandbox`]: how children are started (credentials, fds, no_new_privs), and safe
//!   wrappers for OS facilities only offered as `unsafe` API; the only module allowed
//!   `unsafe` (`deny(unsafe_code)` holds everywhere else).
//! - [`ipc`]: typed messages and the fd-carrying channel between the processes.
//! - [`config`]: the admin's config files, validation with file:line diagnostics.
//! - [`control`]: the root-only control socket's protocol (`condo status`, `top`, ...).
//! - [`http`]: the request-head parser, chunked bodies, paths, routing, shared I/O.
//! - [`demo`]: `condo demo`, the embedded default setup.
//! - [`check`]: `condo check`'s look at tenants' own files, as the tenant.
//! - [`tenant_file`]: bounded, non-blocking reads of the files a tenant controls.

// The rule "sandbox holds the only unsafe code" is the compiler's, not a habit.
#![deny(unsafe_code)]

pub mod accounting;
pub mod check;
pub mod config;
pub mod control;
pub mod demo;
pub mod dispatcher;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod import;
pub mod ipc;
pub mod logging;
pub mod manual;
pub mod master;
#[allow(unsafe_code)]
pub mod sandbox;
pub mod tenant_file;
pub mod tls;
pub mod worker;
