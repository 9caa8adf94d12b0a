//! The admin's config: one main file plus a directory of site files.
//!
//! Loading never stops at the first mistake: every problem becomes a [`Diagnostic`]
//! with file, line and key. Mistakes in the main file are fatal; a broken site file or
//! site only drops that site, so one bad site config never takes the others down.

mod accounts;
mod diag;
mod isolation;
pub mod keys;
mod limits;
mod pool;
pub mod user;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use accounts::{Credentials, Directory, resolve_tenant, resolve_user};
pub use diag::{Diagnostic, Source};
pub use isolation::{Isolation, IsolationMode};
pub use limits::{Limits, Rlimit};
pub use pool::{Pool, parse_size};

/// How a listener gives a connection to the tenant's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Handover {
    /// The client socket itself goes to the worker (SCM_RIGHTS), which answers directly.
    #[default]
    Pass,
    /// The dispatcher relays each request and response over a unix stream.
    Proxy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub addr: SocketAddr,
    pub handover: Handover,
    /// HTTPS: the certificate's owner decides the path (see `crate::tls`).
    pub tls: bool,
    /// Connections start with a PROXY protocol header (from `proxy_protocol_from`).
    pub proxy_protocol: bool,
}

/// A certificate of the host's (a wildcard for customer subdomains, a default): its key
/// is the host's, so the dispatcher terminates TLS with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderCert {
    /// Host names it covers; `*.example.com` covers one label below `example.com`.
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Used for a ClientHello without SNI or with one no certificate covers.
    pub default: bool,
}

/// A site's own certificate: read by the tenant's worker, as the tenant; the
/// dispatcher and the master never open it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Request-head limits and client timeouts, shared by dispatcher and workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLimits {
    pub max_request_line: usize,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    /// From a request's first byte to the end of its head.
    pub header_timeout: Duration,
    /// Longest wait for the next byte of a request body (nginx's client_body_timeout).
    pub body_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub send_timeout: Duration,
    /// Connections the dispatcher holds at once; beyond it new ones are closed.
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listeners: Vec<Listener>,
    pub user: String,
    pub uid_range: (u32, u32),
    pub log_dir: PathBuf,
    pub run_dir: PathBuf,
    pub default_site: Option<String>,
    pub unknown_host_status: u16,
    pub limits: ClientLimits,
    /// Threads of each tenant worker's runtime.
    pub worker_threads: usize,
    /// Dispatcher processes, each with its own SO_REUSEPORT listening sockets.
    pub dispatchers: usize,
    /// Connections a dispatcher lets wait at once for one tenant's worker (being
    /// started, or not taking them); beyond it they get 503 at once, so one tenant
    /// cannot hold what all share (`max_connections`).
    pub worker_queue_max: usize,
    /// Connections of one tenant's sites a dispatcher relays at once (proxy hand-over,
    /// the host's certificates, h2): past it 503, so one site under a slow-read flood
    /// cannot take the `max_connections` every tenant shares.
    pub tenant_relays_max: usize,
    /// Loopback address for `/metrics` (Prometheus) and `/health`; off when `None`.
    pub admin_listen: Option<SocketAddr>,
    /// The bearer token `/metrics` asks for (tenants' code reaches loopback too):
    /// read from this root-owned file, or generated into it (0600) when missing.
    pub admin_token_file: PathBuf,
    pub cgroup: CgroupMode,
    /// Where the cgroup filesystem is mounted (v2), or the directory holding the v1
    /// controller hierarchies.
    pub cgroup_root: PathBuf,
    /// condo's own group under the root, holding one group per tenant. One instance
    /// per parent: a second master configured with a parent in use is refused.
    pub cgroup_parent: String,
    /// Usage counters persist here (`usage.json`), across restarts and reloads.
    pub state_dir: PathBuf,
    /// Load balancers whose PROXY headers are believed; other sources are refused on
    /// `proxy_protocol` listeners.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
}

/// Which cgroup interface to use for tenants' limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// v2 when mounted at `cgroup_root`, else v1, else none (with a log line).
    #[default]
    Auto,
    V1,
    V2,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    pub user: String,
    pub group: Option<String>,
    pub pool: Pool,
    pub limits: Limits,
    pub isolation: Isolation,
    /// The tenant's own config layer, read by its worker (see [`user`]); `~/` is the
    /// tenant's home.
    pub user_config: Option<String>,
    /// Keys of that layer the admin keeps ([`user::TENANT_KEYS`]).
    pub user_config_locked: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub name: String,
    pub aliases: Vec<String>,
    pub tenant: String,
    pub root: PathBuf,
    pub index: Vec<String>,
    pub autoindex: bool,
    /// Refuse (404) every path with a segment starting with `.`, but `/.well-known/`.
    pub deny_hidden: bool,
    /// Refuse (404) every path with a backup or editor file's name in it
    /// ([`crate::http::path::is_backup_name`]).
    pub deny_backup: bool,
    /// Compress static text files on the fly for clients that accept gzip or br
    /// (precompressed `.gz`/`.br` siblings are served either way).
    pub compress: bool,
    /// Environment for every handler's processes (CGI scripts).
    pub env: Vec<(String, String)>,
    /// Tried in order; a request no route matches is served as a static file.
    pub routes: Vec<RouteConfig>,
    /// Requests of this site served at once (mpm-itk's MaxClientsVHost); `None`: no cap.
    pub max_clients: Option<usize>,
    /// Client connections open to this site at once (a slowloris on one site cannot
    /// hold more); beyond it a new connection gets 503 and is closed. `None`: no cap.
    pub max_connections: Option<usize>,
    /// Requests waiting for a slot at the cap; beyond it they get 503 at once.
    pub queue_max: usize,
    /// How long a request waits for a slot before it gets 503.
    pub queue_timeout: Duration,
    /// Niceness of the site's scripts and app processes (mpm-itk's NiceValue); at
    /// least the tenant's.
    pub nice: Option<i32>,
    /// The tenant's rlimits that bind the site's scripts and app processes but not the
    /// worker (see [`Rlimit::only_for_started_processes`]).
    pub process_rlimits: Vec<(Rlimit, u64)>,
    /// The site's own certificate (TLS ends in the tenant's worker).
    pub tls: Option<SiteTls>,
    /// Plain-HTTP requests get a 301 to `https://` on this port.
    pub https_redirect: Option<u16>,
    /// `Strict-Transport-Security` value for HTTPS responses.
    pub hsts: Option<String>,
    /// The front controller (`/index.php`): serves, with the original REQUEST_URI,
    /// every request whose path names neither a file nor a directory (nginx's
    /// `try_files $uri $uri/ /index.php?$args`). A normalised path below the root.
    pub fallback: Option<String>,
    /// The largest request body accepted, in bytes, for Content-Length and chunked
    /// bodies alike: past it, 413 before the body is read or any script starts.
    pub max_body: u64,
    /// Status → page below the site root that answers condo's own errors of that
    /// status (a script page runs with REDIRECT_STATUS and REDIRECT_URL).
    pub error_pages: Vec<(u16, String)>,
    /// Path prefixes (each ending in `/`) under which no script handler runs: a path
    /// there that a CGI, FastCGI or app route would take is 403, never run, never
    /// served as source.
    pub no_scripts: Vec<String>,
}

/// `max_body` when the site sets none: what PHP apps' upload forms expect, and small
/// enough that one site's clients cannot stream a disk's worth into a script.
pub const DEFAULT_MAX_BODY: u64 = 64 << 20;
/// The largest `max_body` an admin may set.
pub const MAX_BODY_LIMIT: u64 = 16 << 30;

/// `https_redirect = true` (port 443) or the HTTPS port.
#[derive(Deserialize)]
#[serde(untagged)]
enum RedirectSetting {
    On(bool),
    Port(u16),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    pub matcher: RouteMatch,
    pub handler: Handler,
    /// How long one request may run before its process is killed (504).
    pub timeout: Duration,
    /// The FastCGI application, for `handler = "fastcgi"` only.
    pub fastcgi: Option<FastCgi>,
    /// The tenant's own HTTP server, for `handler = "app"` only.
    pub app: Option<App>,
}

/// A long-running HTTP server of the tenant's, started and supervised by its worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    /// argv, looked up in PATH; run as the tenant.
    pub command: Vec<String>,
    /// The app's working directory; `None`: the site root.
    pub workdir: Option<PathBuf>,
    /// Stop the app after this long without requests; `None` keeps it running.
    pub idle_timeout: Option<Duration>,
}

/// A FastCGI application behind a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastCgi {
    pub app: FastCgiApp,
    /// Processes kept running even without work (the tenant's `workers_min`).
    pub processes_min: usize,
    /// Processes condo runs at most (and concurrent requests to the app).
    pub processes_max: usize,
    /// Idle processes are stopped after this long; `None` keeps them.
    pub idle_timeout: Option<Duration>,
    /// A process is replaced after this many requests.
    pub max_requests: u32,
    /// The processes' working directory; `None`: the site root.
    pub workdir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FastCgiApp {
    /// condo starts and pools these processes as the tenant (argv; looked up in PATH).
    Command(Vec<String>),
    /// A socket the tenant runs itself; used only if its peer runs as the tenant.
    Socket(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteMatch {
    /// The normalised path starts with this ("/cgi-bin/").
    Prefix(String),
    /// A path segment ends with this (".cgi"): that segment names the script.
    Suffix(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Handler {
    Static,
    Cgi,
    FastCgi,
    App,
}

impl Site {
    /// The page that answers condo's own errors of this status (`error_pages`).
    pub fn error_page(&self, status: u16) -> Option<&str> {
        self.error_pages
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, page)| page.as_str())
    }

    /// The names this site refuses to serve, whichever handler would serve them.
    pub fn deny(&self) -> crate::http::path::Deny {
        crate::http::path::Deny {
            hidden: self.deny_hidden,
            backup: self.deny_backup,
        }
    }
}

impl RouteConfig {
    pub fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            RouteMatch::Prefix(p) => path.starts_with(p.as_str()),
            RouteMatch::Suffix(s) => path
                .split('/')
                .any(|seg| seg.len() > s.len() && seg.ends_with(s.as_str())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub server: Server,
    /// The host's certificates, for TLS the dispatcher terminates.
    pub certificates: Vec<ProviderCert>,
    pub tenants: BTreeMap<String, Tenant>,
    pub sites: Vec<Site>,
}

impl Config {
    /// What is valid but unsafe, for `condo check` to say without failing: tenants
    /// whose memory or process count the admin explicitly left unlimited (`"max"`),
    /// so their fork bomb or leak reaches the host.
    pub fn warnings(&self) -> Vec<Diagnostic> {
        let mut warnings = Vec::new();
        for tenant in self.tenants.values() {
            for key in tenant.limits.unlimited() {
                warnings.push(Diagnostic {
                    file: self.file.clone(),
                    line: 0,
                    column: 0,
                    key: format!("tenant.{}.{key}", tenant.name),
                    message: format!(
                        "tenant {} has no {key} (\"max\"): its processes can take the host's {}",
                        tenant.name,
                        if key == "memory_max" {
                            "memory"
                        } else {
                            "process table"
                        }
                    ),
                });
            }
        }
        warnings
    }

    pub fn tenant_sites(&self, tenant: &str) -> impl Iterator<Item = &Site> {
        self.sites.iter().filter(move |s| s.tenant == tenant)
    }

    /// Every tenant's sites in one pass: for work over all tenants, where
    /// [`Self::tenant_sites`] per tenant would be quadratic (a host with 10,000 tenants
    /// and 20,000 sites).
    pub fn sites_by_tenant(&self) -> std::collections::HashMap<&str, Vec<&Site>> {
        let mut by: std::collections::HashMap<&str, Vec<&Site>> = std::collections::HashMap::new();
        for site in &self.sites {
            by.entry(site.tenant.as_str()).or_default().push(site);
        }
        by
    }

    /// This config with `tenant`'s section and sites taken from `newer` (added,
    /// changed or removed), everything else as it is: `condo reload --tenant`. `Err`
    /// when one of the tenant's new host names is another tenant's here.
    pub fn with_tenant_from(&self, newer: &Config, tenant: &str) -> Result<Config, String> {
        let mut merged = self.clone();
        match newer.tenants.get(tenant) {
            Some(t) => {
                merged.tenants.insert(tenant.to_string(), t.clone());
            }
            None => {
                merged.tenants.remove(tenant);
            }
        }
        merged.sites.retain(|s| s.tenant != tenant);
        for site in newer.tenant_sites(tenant) {
            let names = std::iter::once(&site.name).chain(&site.aliases);
            for name in names {
                if let Some(other) = merged
                    .sites
                    .iter()
                    .find(|s| s.name == *name || s.aliases.contains(name))
                {
                    return Err(format!(
                        "host `{name}` of tenant {tenant} is served by tenant {}'s site {}; nothing applied",
                        other.tenant, other.name
                    ));
                }
            }
            merged.sites.push(site.clone());
        }
        Ok(merged)
    }
}

/// What loading produced: the config (absent when the main file is unusable) and every
/// mistake found on the way.
pub struct Loaded {
    pub config: Option<Config>,
    pub diagnostics: Vec<Diagnostic>,
    /// Where each loaded site is written: site name → (file, key such as `site.0`),
    /// for what `condo check` finds later about a site (its own certificate).
    pub site_origins: HashMap<String, (PathBuf, String)>,
}

// ---- the files as written ----

#[derive(Deserialize)]
struct MainFile {
    server: ServerSection,
    #[serde(default)]
    certificate: Vec<CertificateSection>,
    #[serde(default)]
    defaults: TenantSection,
    #[serde(default)]
    tenant: BTreeMap<String, TenantSection>,
}

fn default_user() -> String {
    "condo".into()
}
fn default_uid_range() -> [u32; 2] {
    [1000, 60000]
}
fn default_sites() -> String {
    "sites/*.toml".into()
}
fn default_log_dir() -> PathBuf {
    "/var/log/condo".into()
}
fn default_run_dir() -> PathBuf {
    "/run/condo".into()
}
fn default_worker_queue_max() -> usize {
    256
}

fn default_worker_threads() -> usize {
    1
}
fn default_cgroup_root() -> PathBuf {
    "/sys/fs/cgroup".into()
}
/// condo's group when the config names none: `condo` for the default run_dir, else
/// `condo-<last part of run_dir>-<hash of run_dir>`. Distinct per instance (two live
/// instances cannot share a run_dir: it holds the control socket and the pid file), and
/// the same across restarts of one instance, so that the groups a killed master left
/// are found and removed by its next start.
pub fn default_cgroup_parent(run_dir: &Path) -> String {
    // Normalized as the kernel resolves it lexically: `/run/x/` and `/run//x` are one.
    let parts: Vec<String> = run_dir
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            std::path::Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    if parts == ["run", "condo"] {
        return "condo".into();
    }
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let hash = format!("/{}", parts.join("/"))
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let label: String = parts
        .last()
        .map(|p| {
            p.chars()
                .map(|c| c.to_ascii_lowercase())
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect::<String>()
        })
        .unwrap_or_default();
    let label = label.trim_matches('-');
    let label: String = label.chars().take(24).collect();
    let label = label.trim_end_matches('-');
    if label.is_empty() {
        format!("condo-{:08x}", hash as u32)
    } else {
        format!("condo-{label}-{:08x}", hash as u32)
    }
}
fn default_state_dir() -> PathBuf {
    "/var/lib/condo".into()
}
fn default_dispatchers() -> usize {
    1
}
fn default_unknown_host() -> u16 {
    404
}

#[derive(Deserialize)]
struct ServerSection {
    #[serde(default)]
    listen: Vec<ListenEntry>,
    #[serde(default)]
    tls_listen: Vec<String>,
    #[serde(default)]
    handover: Handover,
    #[serde(default = "default_user")]
    user: String,
    #[serde(default = "default_uid_range")]
    uid_range: [u32; 2],
    #[serde(default = "default_sites")]
    sites: String,
    #[serde(default = "default_log_dir")]
    log_dir: PathBuf,
    #[serde(default = "default_run_dir")]
    run_dir: PathBuf,
    default_site: Option<String>,
    #[serde(default = "default_unknown_host")]
    unknown_host: u16,
    #[serde(default = "default_worker_threads")]
    worker_threads: usize,
    #[serde(default = "default_dispatchers")]
    dispatchers: usize,
    #[serde(default = "default_worker_queue_max")]
    worker_queue_max: usize,
    tenant_relays_max: Option<usize>,
    admin_listen: Option<String>,
    admin_token_file: Option<PathBuf>,
    #[serde(default)]
    cgroup: CgroupMode,
    #[serde(default = "default_cgroup_root")]
    cgroup_root: PathBuf,
    cgroup_parent: Option<String>,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    proxy_protocol_from: Vec<String>,
    max_request_line: Option<usize>,
    max_head_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    keepalive_timeout: Option<String>,
    send_timeout: Option<String>,
}

/// `listen` entries are either `"addr:port"` or `{ addr = "...", handover = "proxy" }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ListenEntry {
    Addr(String),
    Table(ListenTable),
}

#[derive(Deserialize)]
struct ListenTable {
    addr: String,
    handover: Option<Handover>,
    tls: Option<bool>,
    proxy_protocol: Option<bool>,
}

#[derive(Deserialize)]
struct CertificateSection {
    names: Vec<String>,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    default: bool,
}

/// `[defaults]` and `[tenant.NAME]` take the same keys, except that only a tenant
/// names its `user` and `group`. One struct for both, without `flatten` (it would hide
/// unknown keys from the diagnostics).
#[derive(Deserialize, Default)]
struct TenantSection {
    user: Option<String>,
    group: Option<String>,
    workers_min: Option<usize>,
    workers_max: Option<usize>,
    idle_timeout: Option<String>,
    max_requests: Option<u64>,
    worker_max_requests: Option<u64>,
    request_timeout: Option<String>,
    worker_memory_max: Option<String>,
    memory_max: Option<String>,
    cpu_max: Option<f64>,
    pids_max: Option<toml::Value>,
    io_weight: Option<u32>,
    nice: Option<i32>,
    rlimit_nofile: Option<toml::Value>,
    rlimit_nproc: Option<toml::Value>,
    rlimit_as: Option<toml::Value>,
    rlimit_core: Option<toml::Value>,
    rlimit_cpu: Option<toml::Value>,
    rlimit_fsize: Option<toml::Value>,
    isolation: Option<String>,
    allow_read: Option<Vec<PathBuf>>,
    allow_write: Option<Vec<PathBuf>>,
    user_config: Option<String>,
    user_config_locked: Option<Vec<String>>,
}

impl TenantSection {
    fn isolation_keys(&self) -> isolation::IsolationKeys {
        isolation::IsolationKeys {
            isolation: self.isolation.clone(),
            allow_read: self.allow_read.clone(),
            allow_write: self.allow_write.clone(),
        }
    }

    fn pool_keys(&self) -> pool::PoolKeys {
        pool::PoolKeys {
            workers_min: self.workers_min,
            workers_max: self.workers_max,
            idle_timeout: self.idle_timeout.clone(),
            max_requests: self.max_requests,
            worker_max_requests: self.worker_max_requests,
            request_timeout: self.request_timeout.clone(),
            worker_memory_max: self.worker_memory_max.clone(),
        }
    }

    fn limit_keys(&self) -> limits::LimitKeys {
        limits::LimitKeys {
            memory_max: self.memory_max.clone(),
            cpu_max: self.cpu_max,
            pids_max: self.pids_max.clone(),
            io_weight: self.io_weight,
            nice: self.nice,
            rlimit_nofile: self.rlimit_nofile.clone(),
            rlimit_nproc: self.rlimit_nproc.clone(),
            rlimit_as: self.rlimit_as.clone(),
            rlimit_core: self.rlimit_core.clone(),
            rlimit_cpu: self.rlimit_cpu.clone(),
            rlimit_fsize: self.rlimit_fsize.clone(),
        }
    }
}

/// A site file as one document (the loader takes its `[[site]]`s one by one).
#[cfg(test)]
#[derive(Deserialize)]
struct SiteFile {
    #[serde(default)]
    site: Vec<SiteSection>,
}

#[derive(Deserialize)]
struct SiteSection {
    name: String,
    #[serde(default)]
    aliases: Vec<String>,
    tenant: String,
    root: PathBuf,
    index: Option<Vec<String>>,
    #[serde(default)]
    autoindex: bool,
    deny_hidden: Option<bool>,
    deny_backup: Option<bool>,
    compress: Option<bool>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    route: Vec<RouteSection>,
    max_clients: Option<usize>,
    max_connections: Option<usize>,
    nice: Option<i32>,
    tls: Option<SiteTls>,
    https_redirect: Option<RedirectSetting>,
    hsts: Option<String>,
    queue_max: Option<usize>,
    queue_timeout: Option<String>,
    fallback: Option<String>,
    max_body: Option<String>,
    #[serde(default)]
    error_pages: BTreeMap<String, String>,
    #[serde(default)]
    no_scripts: Vec<String>,
}

#[derive(Deserialize)]
pub(crate) struct RouteSection {
    path: Option<String>,
    suffix: Option<String>,
    handler: String,
    timeout: Option<String>,
    command: Option<Vec<String>>,
    socket: Option<PathBuf>,
    processes_max: Option<usize>,
    idle_timeout: Option<String>,
    max_requests: Option<u32>,
    workdir: Option<PathBuf>,
}

// ---- loading and validation ----

/// `[server] run_dir` of the main file alone (its default when unset), read without
/// the site files or any validation: all the control commands (`status`, `reload
/// --tenant`, ...) need to find the running master, at any number of sites and also
/// while some file has a mistake.
pub fn run_dir_of(path: &Path) -> Result<PathBuf, String> {
    #[derive(Deserialize)]
    struct Main {
        server: Server,
    }
    #[derive(Deserialize)]
    struct Server {
        #[serde(default = "default_run_dir")]
        run_dir: PathBuf,
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let main: Main =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    Ok(main.server.run_dir)
}

/// Whether `tenant` has its own config file (its section's `user_config`, else
/// `[defaults]`'), from the main file alone.
pub fn has_user_config(path: &Path, tenant: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(main) = text.parse::<toml::Table>() else {
        return false;
    };
    let set = |t: Option<&toml::Value>| t.and_then(|t| t.get("user_config")).is_some();
    set(main.get("tenant").and_then(|t| t.get(tenant))) || set(main.get("defaults"))
}

/// Load and validate the main file and every site file. Checks that accounts exist and
/// fall in `uid_range` too, so `condo check` catches what `serve` would refuse.
pub fn load(path: &Path) -> Loaded {
    let mut diagnostics = Vec::new();
    let source = match Source::read(path) {
        Ok(s) => s,
        Err(d) => {
            return Loaded {
                config: None,
                diagnostics: vec![d],
                site_origins: HashMap::new(),
            };
        }
    };
    let (main, main_diags) = source.deserialize::<MainFile>();
    let shadowed: Vec<String> = main_diags.iter().map(|d| d.key.clone()).collect();
    diagnostics.extend(main_diags);
    let validated_from = diagnostics.len();
    let Some(main) = main else {
        return Loaded {
            config: None,
            diagnostics,
            site_origins: HashMap::new(),
        };
    };
    let server = validate_server(&source, &main.server, &mut diagnostics);
    let defaults = &main.defaults;
    for (key, set) in [
        ("user", defaults.user.is_some()),
        ("group", defaults.group.is_some()),
    ] {
        if set {
            diagnostics.push(source.error(
                &format!("defaults.{key}"),
                "each tenant names its own user and group, in [tenant.NAME]",
            ));
        }
    }
    let default_pool = Pool::apply(
        &Pool::default(),
        &defaults.pool_keys(),
        &source,
        "defaults",
        &mut diagnostics,
    );
    let default_limits = Limits::apply(
        &Limits::safe_defaults(),
        &defaults.limit_keys(),
        &source,
        "defaults",
        &mut diagnostics,
    );
    let default_isolation = Isolation::apply(
        &Isolation::default(),
        &defaults.isolation_keys(),
        &source,
        "defaults",
        &mut diagnostics,
    );
    let mut tenants = BTreeMap::new();
    // Read once for every tenant (linear in tenants, not quadratic).
    let accounts = accounts::Directory::load();
    let dispatcher = server
        .as_ref()
        .and_then(|server| accounts.user(&server.user).ok());
    // uid → the tenant that runs as it.
    let mut uid_of: HashMap<u32, String> = HashMap::new();
    for (name, t) in &main.tenant {
        let key = format!("tenant.{name}");
        if !valid_name(name) {
            diagnostics.push(source.error(&key, "tenant names use only a-z, 0-9, '-' and '_'"));
            continue;
        }
        let Some(user) = t.user.clone() else {
            diagnostics.push(source.error(
                &key,
                "a tenant needs `user`: the account its processes run as",
            ));
            continue;
        };
        let tenant = Tenant {
            name: name.clone(),
            user,
            group: t.group.clone(),
            pool: Pool::apply(
                &default_pool,
                &t.pool_keys(),
                &source,
                &key,
                &mut diagnostics,
            ),
            limits: Limits::apply(
                &default_limits,
                &t.limit_keys(),
                &source,
                &key,
                &mut diagnostics,
            ),
            isolation: Isolation::apply(
                &default_isolation,
                &t.isolation_keys(),
                &source,
                &key,
                &mut diagnostics,
            ),
            user_config: t
                .user_config
                .clone()
                .or_else(|| defaults.user_config.clone()),
            user_config_locked: t
                .user_config_locked
                .clone()
                .or_else(|| defaults.user_config_locked.clone())
                .unwrap_or_default(),
        };
        if let Some(path) = &tenant.user_config
            && !(path.starts_with('/') || path.starts_with("~/"))
        {
            diagnostics.push(source.error(
                &format!("{key}.user_config"),
                "must be an absolute path or start with ~/ (the tenant's home)",
            ));
        }
        for locked in &tenant.user_config_locked {
            if !user::TENANT_KEYS.contains(&locked.as_str()) {
                diagnostics.push(source.error(
                    &format!("{key}.user_config_locked"),
                    format!(
                        "`{locked}` is not a key a tenant may set; those are {}",
                        user::TENANT_KEYS.join(", ")
                    ),
                ));
            }
        }
        if let Some(server) = &server {
            let creds = match accounts.resolve_tenant(&tenant, server.uid_range) {
                Ok(creds) => creds,
                Err(message) => {
                    diagnostics.push(source.error(&format!("{key}.user"), message));
                    continue;
                }
            };
            // The dispatcher's group reads the metrics file (every tenant's usage), and
            // its uid holds the host's TLS keys: no tenant may run with either.
            // (Unprivileged, everything runs as one user anyway and nothing is isolated.)
            if rustix::process::geteuid().is_root()
                && let Some(d) = &dispatcher
                && (creds.uid == d.uid || creds.gid == d.gid || creds.groups.contains(&d.gid))
            {
                diagnostics.push(source.error(
                    &format!("{key}.user"),
                    format!(
                        "user `{}` would run as the dispatcher's user or in its group ({}), which reads every tenant's metrics",
                        tenant.user, server.user
                    ),
                ));
                continue;
            }
            // Each tenant gets its own cgroup: one user in two would have twice the
            // limits, and two workers that can signal and trace each other.
            if let Some(other) = uid_of.get(&creds.uid) {
                let first = source.error(&format!("tenant.{other}.user"), "");
                diagnostics.push(source.error(
                    &format!("{key}.user"),
                    format!(
                        "user `{}` (uid {}) is already tenant {other}'s (user at {}:{}): one Unix user in two tenants would get two cgroups, so twice the limits; put both tenants' sites in one tenant",
                        tenant.user,
                        creds.uid,
                        source.path.display(),
                        first.line
                    ),
                ));
                continue;
            }
            uid_of.insert(creds.uid, name.clone());
        }
        tenants.insert(name.clone(), tenant);
    }
    drop_shadowed(&mut diagnostics, validated_from, &source.path, &shadowed);
    let Some(server) = server else {
        return Loaded {
            config: None,
            diagnostics,
            site_origins: HashMap::new(),
        };
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let mut site_origins = HashMap::new();
    let sites = load_sites(
        base,
        &main.server.sites,
        &source,
        &tenants,
        &mut diagnostics,
        &mut site_origins,
    );
    if let Some(default) = &server.default_site
        && !sites.iter().any(|s| &s.name == default)
    {
        diagnostics.push(source.error(
            "server.default_site",
            format!("no loaded site is named `{default}`"),
        ));
    }
    let certificates = validate_certificates(&source, &main.certificate, &mut diagnostics);
    if server.listeners.iter().any(|l| l.tls)
        && certificates.is_empty()
        && !sites.iter().any(|s| s.tls.is_some())
    {
        diagnostics.push(source.error(
            "server.tls_listen",
            "a TLS listener needs certificates: a [[certificate]] of the host's or a site's `tls`",
        ));
    }
    drop_shadowed(&mut diagnostics, validated_from, &source.path, &shadowed);
    // Mistakes in the main file are fatal (they concern every site); the site files'
    // only cost their own sites.
    let main_ok = !diagnostics.iter().any(|d| d.file == source.path);
    Loaded {
        config: main_ok.then(|| Config {
            file: path.to_path_buf(),
            server,
            certificates,
            tenants,
            sites,
        }),
        diagnostics,
        site_origins,
    }
}

/// The host's certificates: names, absolute paths, files that parse (read here as the
/// admin running `condo check` or `serve`), at most one default.
fn validate_certificates(
    source: &Source,
    sections: &[CertificateSection],
    diags: &mut Vec<Diagnostic>,
) -> Vec<ProviderCert> {
    let mut certs = Vec::new();
    for (i, c) in sections.iter().enumerate() {
        let key = format!("certificate.{i}");
        let before = diags.len();
        let names: Vec<String> = c.names.iter().map(|n| normalize_host(n)).collect();
        if names.is_empty() && !c.default {
            diags.push(source.error(&format!("{key}.names"), "name the hosts it covers"));
        }
        for (j, name) in names.iter().enumerate() {
            let plain = name.strip_prefix("*.").unwrap_or(name);
            if !valid_host(plain) {
                diags.push(source.error(
                    &format!("{key}.names.{j}"),
                    format!("`{name}` is not a host name or `*.domain` wildcard"),
                ));
            }
        }
        for (k, path) in [("cert", &c.cert), ("key", &c.key)] {
            if !path.is_absolute() {
                diags.push(source.error(&format!("{key}.{k}"), "must be an absolute path"));
            }
        }
        if diags.len() == before
            && let Err(e) = crate::tls::load_certified_key(&c.cert, &c.key)
        {
            diags.push(source.error(&key, format!("{e:#}")));
        }
        if diags.len() == before {
            certs.push(ProviderCert {
                names,
                cert: c.cert.clone(),
                key: c.key.clone(),
                default: c.default,
            });
        }
    }
    if certs.iter().filter(|c| c.default).count() > 1 {
        diags.push(source.error("certificate", "only one certificate can be the default"));
    }
    certs
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn parse_duration(
    source: &Source,
    key: &str,
    value: Option<&str>,
    default: Duration,
    diags: &mut Vec<Diagnostic>,
) -> Duration {
    match value.map(humantime::parse_duration) {
        None => default,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            diags.push(source.error(key, "must be longer than zero"));
            default
        }
        Some(Err(e)) => {
            diags.push(source.error(
                key,
                format!("not a duration ({e}); write e.g. \"10s\" or \"2m\""),
            ));
            default
        }
    }
}

fn validate_server(
    source: &Source,
    s: &ServerSection,
    diags: &mut Vec<Diagnostic>,
) -> Option<Server> {
    let before = diags.len();
    let mut listeners = Vec::new();
    if s.listen.is_empty() && s.tls_listen.is_empty() {
        diags.push(source.error("server.listen", "at least one listen address is needed"));
    }
    let tls_entries = s
        .tls_listen
        .iter()
        .enumerate()
        .map(|(i, a)| (a, s.handover, true, false, format!("server.tls_listen.{i}")));
    let entries = s.listen.iter().enumerate().map(|(i, entry)| match entry {
        ListenEntry::Addr(a) => (a, s.handover, false, false, format!("server.listen.{i}")),
        ListenEntry::Table(t) => (
            &t.addr,
            t.handover.unwrap_or(s.handover),
            t.tls.unwrap_or(false),
            t.proxy_protocol.unwrap_or(false),
            format!("server.listen.{i}.addr"),
        ),
    });
    for (addr, handover, tls, proxy_protocol, key) in entries.chain(tls_entries) {
        match addr.parse::<SocketAddr>() {
            Ok(addr) => listeners.push(Listener {
                addr,
                handover,
                tls,
                proxy_protocol,
            }),
            Err(_) => diags.push(source.error(
                &key,
                format!(
                    "`{addr}` is not an IP:port address (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")"
                ),
            )),
        }
    }
    let [lo, hi] = s.uid_range;
    if lo == 0 || lo > hi {
        diags.push(source.error(
            "server.uid_range",
            "must be [low, high] with 0 < low <= high: root is never a tenant",
        ));
    }
    if !(1..=64).contains(&s.worker_threads) {
        diags.push(source.error("server.worker_threads", "must be between 1 and 64"));
    }
    if !(1..=1_000_000).contains(&s.worker_queue_max) {
        diags.push(source.error("server.worker_queue_max", "must be between 1 and 1000000"));
    }
    let admin_listen = match s.admin_listen.as_deref().map(str::parse::<SocketAddr>) {
        None => None,
        Some(Ok(addr)) if addr.ip().is_loopback() => Some(addr),
        Some(Ok(addr)) => {
            diags.push(source.error(
                "server.admin_listen",
                format!("{addr} is not a loopback address: the admin listener shows every tenant's usage, so it only listens on 127.0.0.0/8 or ::1"),
            ));
            None
        }
        Some(Err(_)) => {
            diags.push(source.error(
                "server.admin_listen",
                "not an IP:port address (e.g. \"127.0.0.1:9180\")",
            ));
            None
        }
    };
    if !(1..=64).contains(&s.dispatchers) {
        diags.push(source.error("server.dispatchers", "must be between 1 and 64"));
    }
    if !matches!(s.unknown_host, 404 | 421) {
        diags.push(source.error("server.unknown_host", "must be 404 or 421"));
    }
    match resolve_user(&s.user) {
        Ok(c) if c.uid == 0 => {
            diags.push(source.error("server.user", "the dispatcher must not run as root"))
        }
        Ok(_) => {}
        Err(e) => diags.push(source.error("server.user", e)),
    }
    let mut proxy_protocol_from = Vec::new();
    for (i, text) in s.proxy_protocol_from.iter().enumerate() {
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => proxy_protocol_from.push(net),
            Err(_) => diags.push(source.error(
                &format!("server.proxy_protocol_from.{i}"),
                format!(
                    "`{text}` is not an address or network (e.g. \"10.0.0.5\" or \"10.0.0.0/24\")"
                ),
            )),
        }
    }
    if listeners.iter().any(|l| l.proxy_protocol) && proxy_protocol_from.is_empty() {
        diags.push(source.error(
            "server.proxy_protocol_from",
            "a listener with proxy_protocol needs the balancers' addresses here; from anyone else a PROXY header would be a forged client address",
        ));
    }
    if let Some(parent) = &s.cgroup_parent
        && !valid_name(parent)
    {
        diags.push(source.error(
            "server.cgroup_parent",
            "a plain name (a-z, 0-9, '-', '_'): condo's group under the cgroup root",
        ));
    }
    let admin_token_file = s
        .admin_token_file
        .clone()
        .unwrap_or_else(|| s.state_dir.join("admin.token"));
    for (key, path) in [
        ("server.log_dir", &s.log_dir),
        ("server.run_dir", &s.run_dir),
        ("server.state_dir", &s.state_dir),
        ("server.cgroup_root", &s.cgroup_root),
        ("server.admin_token_file", &admin_token_file),
    ] {
        if !path.is_absolute() {
            diags.push(source.error(key, "must be an absolute path"));
        }
    }
    let defaults = ClientLimits {
        max_request_line: 8192,
        max_head_bytes: 16384,
        max_headers: 100,
        max_connections: 16384,
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(60),
        keepalive_timeout: Duration::from_secs(75),
        send_timeout: Duration::from_secs(60),
    };
    let limits = ClientLimits {
        max_request_line: s.max_request_line.unwrap_or(defaults.max_request_line),
        max_head_bytes: s.max_head_bytes.unwrap_or(defaults.max_head_bytes),
        max_headers: s.max_headers.unwrap_or(defaults.max_headers),
        max_connections: s.max_connections.unwrap_or(defaults.max_connections),
        header_timeout: parse_duration(
            source,
            "server.header_timeout",
            s.header_timeout.as_deref(),
            defaults.header_timeout,
            diags,
        ),
        body_timeout: parse_duration(
            source,
            "server.body_timeout",
            s.body_timeout.as_deref(),
            defaults.body_timeout,
            diags,
        ),
        keepalive_timeout: parse_duration(
            source,
            "server.keepalive_timeout",
            s.keepalive_timeout.as_deref(),
            defaults.keepalive_timeout,
            diags,
        ),
        send_timeout: parse_duration(
            source,
            "server.send_timeout",
            s.send_timeout.as_deref(),
            defaults.send_timeout,
            diags,
        ),
    };
    for (key, value, min, max) in [
        (
            "server.max_request_line",
            limits.max_request_line,
            64,
            1 << 16,
        ),
        ("server.max_head_bytes", limits.max_head_bytes, 256, 1 << 20),
        ("server.max_headers", limits.max_headers, 4, 1000),
        (
            "server.max_connections",
            limits.max_connections,
            16,
            1 << 20,
        ),
    ] {
        if !(min..=max).contains(&value) {
            diags.push(source.error(key, format!("must be between {min} and {max}")));
        }
    }
    // A quarter of what all share: one tenant's flood leaves three quarters to the rest.
    let tenant_relays_max = s
        .tenant_relays_max
        .unwrap_or((limits.max_connections / 4).max(1));
    if !(1..=1 << 20).contains(&tenant_relays_max) {
        diags.push(source.error(
            "server.tenant_relays_max",
            format!("must be between 1 and {}", 1 << 20),
        ));
    }
    if diags.len() > before {
        return None;
    }
    Some(Server {
        listeners,
        user: s.user.clone(),
        uid_range: (lo, hi),
        log_dir: s.log_dir.clone(),
        run_dir: s.run_dir.clone(),
        default_site: s.default_site.as_ref().map(|d| d.to_ascii_lowercase()),
        unknown_host_status: s.unknown_host,
        worker_threads: s.worker_threads,
        dispatchers: s.dispatchers,
        worker_queue_max: s.worker_queue_max,
        tenant_relays_max,
        admin_listen,
        admin_token_file,
        cgroup: s.cgroup,
        cgroup_root: s.cgroup_root.clone(),
        cgroup_parent: s
            .cgroup_parent
            .clone()
            .unwrap_or_else(|| default_cgroup_parent(&s.run_dir)),
        state_dir: s.state_dir.clone(),
        proxy_protocol_from,
        limits,
    })
}

/// Site files are matched by `pattern` relative to the main file's directory, in sorted
/// order so "first one wins" on a duplicate host name is predictable.
fn load_sites(
    base: &Path,
    pattern: &str,
    main: &Source,
    tenants: &BTreeMap<String, Tenant>,
    diags: &mut Vec<Diagnostic>,
    origins: &mut HashMap<String, (PathBuf, String)>,
) -> Vec<Site> {
    let full = base.join(pattern);
    let mut files: Vec<PathBuf> = match glob::glob(&full.to_string_lossy()) {
        Ok(paths) => paths.filter_map(Result::ok).collect(),
        Err(e) => {
            diags.push(main.error("server.sites", format!("bad pattern: {e}")));
            return Vec::new();
        }
    };
    files.sort();
    let mut sites: Vec<Site> = Vec::new();
    // Host name → (file, key) of the site that claimed it first.
    let mut claimed: HashMap<String, String> = HashMap::new();
    for file in files {
        let source = match Source::read(&file) {
            Ok(s) => s,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        // A file with any mistake is skipped whole (a typo must not quietly serve a
        // site differently from what its owner meant), but every site in it is still
        // validated, so that all its mistakes are shown at once.
        let (parsed, file_diags) = source.deserialize_each::<SiteSection>("site");
        let clean = file_diags.is_empty()
            && parsed
                .as_ref()
                .is_some_and(|p| p.iter().all(Option::is_some));
        let shadowed: Vec<String> = file_diags.iter().map(|d| d.key.clone()).collect();
        let Some(parsed) = parsed else {
            diags.extend(file_diags);
            continue;
        };
        let mut found = Vec::new();
        let mut file_sites = Vec::new();
        // A file not loaded claims no host names.
        let mut scratch = HashMap::new();
        for (i, s) in parsed.into_iter().enumerate() {
            let Some(s) = s else { continue };
            let key = format!("site.{i}");
            let claimed = if clean { &mut claimed } else { &mut scratch };
            if let Some(site) = validate_site(&source, &key, s, tenants, claimed, &mut found) {
                file_sites.push((key, site));
            }
        }
        // A key of the wrong type was read as its default: what is then said about
        // that key is the same mistake again.
        let mut all = file_diags;
        all.extend(
            found
                .into_iter()
                .filter(|d| !is_shadowed(&d.key, &shadowed)),
        );
        all.sort_by_key(|d| (d.line, d.column));
        diags.extend(all);
        if !clean {
            continue;
        }
        for (key, site) in file_sites {
            origins.insert(site.name.clone(), (file.clone(), key));
            sites.push(site);
        }
    }
    sites
}

fn validate_site(
    source: &Source,
    key: &str,
    s: SiteSection,
    tenants: &BTreeMap<String, Tenant>,
    claimed: &mut HashMap<String, String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Site> {
    let before = diags.len();
    let name = normalize_host(&s.name);
    if !valid_host(&name) {
        diags.push(source.error(
            &format!("{key}.name"),
            format!("`{}` is not a valid host name", s.name),
        ));
    }
    let aliases: Vec<String> = s.aliases.iter().map(|a| normalize_host(a)).collect();
    for (j, alias) in aliases.iter().enumerate() {
        if !valid_host(alias) {
            diags.push(source.error(
                &format!("{key}.aliases.{j}"),
                format!("`{alias}` is not a valid host name"),
            ));
        }
    }
    if !tenants.contains_key(&s.tenant) {
        diags.push(source.error(
            &format!("{key}.tenant"),
            format!("no usable tenant `{}` in the main config", s.tenant),
        ));
    }
    if !s.root.is_absolute() {
        diags.push(source.error(&format!("{key}.root"), "must be an absolute path"));
    }
    let index = s
        .index
        .unwrap_or_else(|| vec!["index.html".into(), "index.htm".into()]);
    let deny = crate::http::path::Deny {
        hidden: s.deny_hidden.unwrap_or(true),
        backup: s.deny_backup.unwrap_or(true),
    };
    for (j, name) in index.iter().enumerate() {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            diags.push(source.error(
                &format!("{key}.index.{j}"),
                "index entries are plain file names",
            ));
        } else if crate::http::path::denied(&format!("/{name}"), deny) {
            diags.push(source.error(
                &format!("{key}.index.{j}"),
                format!(
                    "`{name}` is a hidden or backup file name, which this site refuses to serve \
                     (deny_hidden, deny_backup)"
                ),
            ));
        }
    }
    for name in s.env.keys() {
        let valid = name
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
        if name.is_empty() || !valid {
            diags.push(source.error(
                &format!("{key}.env.{name}"),
                "environment names use A-Z, a-z, 0-9 and _ and do not start with a digit",
            ));
        }
    }
    // Routes take their defaults from the tenant's pool settings.
    let pool = tenants
        .get(&s.tenant)
        .map(|t| t.pool.clone())
        .unwrap_or_default();
    let routes: Vec<RouteConfig> = s
        .route
        .iter()
        .enumerate()
        .filter_map(|(j, r)| validate_route(source, &format!("{key}.route.{j}"), r, &pool, diags))
        .collect();
    let here = format!("{}:{}", source.path.display(), source.error(key, "").line);
    for (host, k) in std::iter::once((&name, format!("{key}.name"))).chain(
        aliases
            .iter()
            .enumerate()
            .map(|(j, a)| (a, format!("{key}.aliases.{j}"))),
    ) {
        if let Some(first) = claimed.get(host.as_str()) {
            diags.push(source.error(&k, format!("host `{host}` is already served by the site at {first}; this site is not loaded")));
        }
    }
    if let Some(n) = s.max_clients
        && !(1..=100_000).contains(&n)
    {
        diags.push(source.error(
            &format!("{key}.max_clients"),
            "must be between 1 and 100000",
        ));
    }
    if let Some(n) = s.max_connections
        && !(1..=1_000_000).contains(&n)
    {
        diags.push(source.error(
            &format!("{key}.max_connections"),
            "must be between 1 and 1000000",
        ));
    }
    let queue_max = s.queue_max.unwrap_or(s.max_clients.unwrap_or(0));
    if queue_max > 1_000_000 {
        diags.push(source.error(&format!("{key}.queue_max"), "must be at most 1000000"));
    }
    let queue_timeout = parse_duration(
        source,
        &format!("{key}.queue_timeout"),
        s.queue_timeout.as_deref(),
        Duration::from_secs(10),
        diags,
    );
    if let Some(nice) = s.nice {
        let floor = tenants
            .get(&s.tenant)
            .and_then(|t| t.limits.nice)
            .unwrap_or(0);
        if !(floor..=19).contains(&nice) {
            diags.push(source.error(
                &format!("{key}.nice"),
                format!("must be between {floor} (the tenant's nice) and 19"),
            ));
        }
    }
    let https_redirect = match s.https_redirect {
        None | Some(RedirectSetting::On(false)) => None,
        Some(RedirectSetting::On(true)) => Some(443),
        Some(RedirectSetting::Port(0)) => {
            diags.push(source.error(&format!("{key}.https_redirect"), "true, or a port"));
            None
        }
        Some(RedirectSetting::Port(port)) => Some(port),
    };
    if let Some(value) = &s.hsts
        && (!value.starts_with("max-age=") || value.bytes().any(|b| b.is_ascii_control()))
    {
        diags.push(source.error(
            &format!("{key}.hsts"),
            "a Strict-Transport-Security value such as \"max-age=31536000; includeSubDomains\"",
        ));
    }
    if let Some(tls) = &s.tls {
        for (k, path) in [("cert", &tls.cert), ("key", &tls.key)] {
            if !path.is_absolute() {
                diags.push(source.error(&format!("{key}.tls.{k}"), "must be an absolute path"));
            }
        }
    }
    if s.max_clients.is_none() && (s.queue_max.is_some() || s.queue_timeout.is_some()) {
        diags.push(source.error(
            &format!("{key}.max_clients"),
            "queue_max and queue_timeout need max_clients: without a cap nothing queues",
        ));
    }
    let fallback = s.fallback.as_ref().and_then(|f| {
        let k = format!("{key}.fallback");
        page_path(source, &k, f, deny, diags)
    });
    let max_body = match s.max_body.as_deref() {
        None => DEFAULT_MAX_BODY,
        Some(text) => match parse_size(text) {
            Some(0) => {
                diags.push(source.error(
                    &format!("{key}.max_body"),
                    "0 is not a limit here (nginx and Apache read it as \"unlimited\"): \
                     write the largest body you accept, such as \"64M\"",
                ));
                DEFAULT_MAX_BODY
            }
            Some(n) if n <= MAX_BODY_LIMIT => n,
            _ => {
                diags.push(source.error(
                    &format!("{key}.max_body"),
                    format!(
                        "`{text}` is not a size between 1 and 16G such as \"64M\" \
                         (suffixes K, M, G)"
                    ),
                ));
                DEFAULT_MAX_BODY
            }
        },
    };
    let mut error_pages = Vec::new();
    for (status, page) in &s.error_pages {
        let k = format!("{key}.error_pages.{status}");
        match status.parse::<u16>() {
            Ok(code) if (400..=599).contains(&code) => {
                if let Some(path) = page_path(source, &k, page, deny, diags) {
                    error_pages.push((code, path));
                }
            }
            _ => diags.push(source.error(
                &k,
                format!("`{status}` is not an error status (400 to 599)"),
            )),
        }
    }
    let mut no_scripts = Vec::new();
    for (j, prefix) in s.no_scripts.iter().enumerate() {
        let normalised = crate::http::path::normalize(prefix).is_ok_and(|n| &n == prefix);
        if prefix.starts_with('/') && prefix.ends_with('/') && prefix.len() > 1 && normalised {
            no_scripts.push(prefix.clone());
        } else {
            diags.push(source.error(
                &format!("{key}.no_scripts.{j}"),
                format!(
                    "`{prefix}` is not a directory path below the root such as \"/uploads/\" \
                     (absolute, normalised, ending in /)"
                ),
            ));
        }
    }
    // A script the site names itself but would refuse to run (no_scripts): every
    // request it should answer would get 403 instead.
    let pages = fallback
        .iter()
        .map(|f| (format!("{key}.fallback"), f))
        .chain(
            error_pages
                .iter()
                .map(|(status, page)| (format!("{key}.error_pages.{status}"), page)),
        );
    for (k, page) in pages {
        let script = routes
            .iter()
            .find(|r| r.matches(page))
            .is_some_and(|r| r.handler != Handler::Static);
        if let Some(prefix) = no_scripts.iter().find(|p| page.starts_with(p.as_str()))
            && script
        {
            diags.push(source.error(
                &k,
                format!("`{page}` is a script under no_scripts `{prefix}`, where none may run"),
            ));
        }
    }
    if diags.len() > before {
        return None;
    }
    for host in std::iter::once(&name).chain(aliases.iter()) {
        claimed.insert(host.clone(), here.clone());
    }
    let process_rlimits = tenants
        .get(&s.tenant)
        .map(|t| t.limits.started_process_rlimits())
        .unwrap_or_default();
    Some(Site {
        name,
        aliases,
        tenant: s.tenant,
        root: s.root,
        index,
        autoindex: s.autoindex,
        // On unless the admin says otherwise: what is not meant to be served is not.
        deny_hidden: s.deny_hidden.unwrap_or(true),
        deny_backup: s.deny_backup.unwrap_or(true),
        compress: s.compress.unwrap_or(true),
        env: s.env.into_iter().collect(),
        routes,
        max_clients: s.max_clients,
        max_connections: s.max_connections,
        nice: s.nice,
        process_rlimits,
        tls: s.tls,
        https_redirect,
        hsts: s.hsts,
        queue_max,
        queue_timeout,
        fallback,
        max_body,
        error_pages,
        no_scripts,
    })
}

/// A file path below the site root that a site key names (`fallback`, an error
/// page): absolute, normalised (so it cannot climb out of the root), a file rather than
/// a directory, and a name the site serves at all.
fn page_path(
    source: &Source,
    key: &str,
    path: &str,
    deny: crate::http::path::Deny,
    diags: &mut Vec<Diagnostic>,
) -> Option<String> {
    let normalised = crate::http::path::normalize(path).is_ok_and(|n| n == path);
    if !path.starts_with('/') || path.ends_with('/') || !normalised {
        diags.push(source.error(
            key,
            format!(
                "`{path}` is not a file path below the site root such as \"/index.php\" \
                 (absolute, normalised, no `..`, not a directory)"
            ),
        ));
        return None;
    }
    if crate::http::path::denied(path, deny) {
        diags.push(source.error(
            key,
            format!(
                "`{path}` is a hidden or backup file name, which this site refuses to serve \
                 (deny_hidden, deny_backup)"
            ),
        ));
        return None;
    }
    Some(path.to_string())
}

fn validate_route(
    source: &Source,
    key: &str,
    r: &RouteSection,
    pool: &Pool,
    diags: &mut Vec<Diagnostic>,
) -> Option<RouteConfig> {
    let matcher = match (&r.path, &r.suffix) {
        (Some(p), None)
            if p.starts_with('/') && crate::http::path::normalize(p).is_ok_and(|n| &n == p) =>
        {
            Some(RouteMatch::Prefix(p.clone()))
        }
        (Some(_), None) => {
            diags.push(source.error(
                &format!("{key}.path"),
                "must be a normalised absolute path such as \"/cgi-bin/\"",
            ));
            None
        }
        (None, Some(sfx))
            if sfx.len() > 1 && sfx.starts_with('.') && !sfx[1..].contains(['.', '/']) =>
        {
            Some(RouteMatch::Suffix(sfx.clone()))
        }
        (None, Some(_)) => {
            diags.push(source.error(
                &format!("{key}.suffix"),
                "must be a file extension such as \".cgi\"",
            ));
            None
        }
        _ => {
            diags.push(source.error(key, "a route needs exactly one of `path` or `suffix`"));
            None
        }
    };
    // Each mistake of a route is said, not only the first: the handler is checked
    // whatever the matcher was.
    let handler = match r.handler.as_str() {
        "static" => Handler::Static,
        "cgi" => Handler::Cgi,
        "fastcgi" => Handler::FastCgi,
        "app" => Handler::App,
        other => {
            diags.push(source.error(
                &format!("{key}.handler"),
                format!(
                    "unknown handler `{other}`: use \"static\", \"cgi\", \"fastcgi\" or \"app\""
                ),
            ));
            return None;
        }
    };
    let timeout = parse_duration(
        source,
        &format!("{key}.timeout"),
        r.timeout.as_deref(),
        pool.request_timeout,
        diags,
    );
    // Which handlers each optional key applies to: a key set on any other handler is
    // an error, so a misplaced setting never silently does nothing.
    let extra: [(&str, bool, &[Handler]); 6] = [
        (
            "command",
            r.command.is_some(),
            &[Handler::FastCgi, Handler::App],
        ),
        (
            "idle_timeout",
            r.idle_timeout.is_some(),
            &[Handler::FastCgi, Handler::App],
        ),
        ("socket", r.socket.is_some(), &[Handler::FastCgi]),
        (
            "processes_max",
            r.processes_max.is_some(),
            &[Handler::FastCgi],
        ),
        (
            "max_requests",
            r.max_requests.is_some(),
            &[Handler::FastCgi],
        ),
        (
            "workdir",
            r.workdir.is_some(),
            &[Handler::FastCgi, Handler::App],
        ),
    ];
    let mut bad = false;
    for (name, set, handlers) in extra {
        if set && !handlers.contains(&handler) {
            let names: Vec<String> = handlers
                .iter()
                .map(|h| format!("handler = \"{}\"", handler_name(*h)))
                .collect();
            diags.push(source.error(
                &format!("{key}.{name}"),
                format!("`{name}` only applies to {}", names.join(" or ")),
            ));
            bad = true;
        }
    }
    let fastcgi = if handler == Handler::FastCgi {
        validate_fastcgi(source, key, r, matcher.as_ref(), pool, diags)
    } else {
        None
    };
    let app = if handler == Handler::App {
        validate_app(source, key, r, pool, diags)
    } else {
        None
    };
    if bad
        || (handler == Handler::FastCgi && fastcgi.is_none())
        || (handler == Handler::App && app.is_none())
    {
        return None;
    }
    Some(RouteConfig {
        matcher: matcher?,
        handler,
        timeout,
        fastcgi,
        app,
    })
}

fn handler_name(h: Handler) -> &'static str {
    match h {
        Handler::Static => "static",
        Handler::Cgi => "cgi",
        Handler::FastCgi => "fastcgi",
        Handler::App => "app",
    }
}

fn validate_app(
    source: &Source,
    key: &str,
    r: &RouteSection,
    pool: &Pool,
    diags: &mut Vec<Diagnostic>,
) -> Option<App> {
    let before = diags.len();
    match &r.command {
        None => diags.push(source.error(
            key,
            "an app route needs `command`, e.g. [\"python3\", \"app.py\"]",
        )),
        Some(cmd) if cmd.is_empty() || cmd[0].is_empty() => {
            diags.push(source.error(&format!("{key}.command"), "must name a program"))
        }
        Some(cmd) if cmd.iter().any(|a| a.contains('\0')) => {
            diags.push(source.error(&format!("{key}.command"), "must not contain NUL"))
        }
        Some(_) => {}
    }
    if let Some(dir) = &r.workdir
        && !dir.is_absolute()
    {
        diags.push(source.error(&format!("{key}.workdir"), "must be an absolute path"));
    }
    let idle_timeout = Some(parse_duration(
        source,
        &format!("{key}.idle_timeout"),
        r.idle_timeout.as_deref(),
        pool.idle_timeout,
        diags,
    ));
    if diags.len() > before {
        return None;
    }
    Some(App {
        command: r.command.clone()?,
        workdir: r.workdir.clone(),
        idle_timeout,
    })
}

fn validate_fastcgi(
    source: &Source,
    key: &str,
    r: &RouteSection,
    matcher: Option<&RouteMatch>,
    pool: &Pool,
    diags: &mut Vec<Diagnostic>,
) -> Option<FastCgi> {
    let before = diags.len();
    // Only files with the route's suffix ever reach the app (PHP-FPM's
    // security.limit_extensions): a prefix route would hand it any file, such as an
    // uploaded image with PHP inside.
    if matches!(matcher, Some(RouteMatch::Prefix(_))) {
        diags.push(source.error(
            &format!("{key}.path"),
            "a fastcgi route matches by `suffix` (e.g. \".php\"), so only such files reach the app",
        ));
    }
    let app = match (&r.command, &r.socket) {
        (Some(_), Some(_)) => {
            diags.push(source.error(
                &format!("{key}.socket"),
                "give either `command` (condo runs the app) or `socket` (the tenant runs it), not both",
            ));
            None
        }
        (None, None) => {
            diags.push(source.error(
                key,
                "a fastcgi route needs `command` (e.g. [\"php-cgi\"]) or `socket`",
            ));
            None
        }
        (Some(cmd), None) if cmd.is_empty() || cmd[0].is_empty() => {
            diags.push(source.error(&format!("{key}.command"), "must name a program"));
            None
        }
        (Some(cmd), None) if cmd.iter().any(|a| a.contains('\0')) => {
            diags.push(source.error(&format!("{key}.command"), "must not contain NUL"));
            None
        }
        (Some(cmd), None) => Some(FastCgiApp::Command(cmd.clone())),
        (None, Some(path)) if !path.is_absolute() => {
            diags.push(source.error(&format!("{key}.socket"), "must be an absolute path"));
            None
        }
        (None, Some(path)) => Some(FastCgiApp::Socket(path.clone())),
    };
    let processes_max = r.processes_max.unwrap_or(pool.workers_max);
    if !(1..=256).contains(&processes_max) {
        diags.push(source.error(&format!("{key}.processes_max"), "must be between 1 and 256"));
    }
    let max_requests = r
        .max_requests
        .unwrap_or(pool.max_requests.min(u64::from(u32::MAX)) as u32);
    if max_requests == 0 {
        diags.push(source.error(&format!("{key}.max_requests"), "must be at least 1"));
    }
    let idle_timeout = Some(parse_duration(
        source,
        &format!("{key}.idle_timeout"),
        r.idle_timeout.as_deref(),
        pool.idle_timeout,
        diags,
    ));
    if diags.len() > before {
        return None;
    }
    if let Some(dir) = &r.workdir
        && !dir.is_absolute()
    {
        diags.push(source.error(&format!("{key}.workdir"), "must be an absolute path"));
        return None;
    }
    Some(FastCgi {
        app: app?,
        processes_min: pool.workers_min.min(processes_max),
        processes_max,
        idle_timeout,
        max_requests,
        workdir: r.workdir.clone(),
    })
}

/// Drop the diagnostics from `from` on about `file`'s keys of the wrong type: they were
/// validated as their defaults, and the mistake is already said.
fn drop_shadowed(diags: &mut Vec<Diagnostic>, from: usize, file: &Path, shadowed: &[String]) {
    let mut i = 0;
    diags.retain(|d| {
        i += 1;
        i <= from || d.file != file || !is_shadowed(&d.key, shadowed)
    });
}

/// Is `key` the same as, or under, one of `shadowed`?
fn is_shadowed(key: &str, shadowed: &[String]) -> bool {
    shadowed.iter().any(|s| {
        !s.is_empty()
            && (key == s
                || key
                    .strip_prefix(s.as_str())
                    .is_some_and(|r| r.starts_with('.')))
    })
}

/// Host names are compared lowercased and without a trailing dot, as requests are.
pub fn normalize_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cgroup_parent_is_one_per_run_dir_and_stable() {
        assert_eq!(default_cgroup_parent(Path::new("/run/condo")), "condo");
        assert_eq!(default_cgroup_parent(Path::new("/run//condo/")), "condo");
        let two = default_cgroup_parent(Path::new("/run/condo2"));
        assert!(two.starts_with("condo-condo2-"), "{two}");
        assert_eq!(two, default_cgroup_parent(Path::new("/run/condo2/")));
        let other = default_cgroup_parent(Path::new("/srv/condo2"));
        assert_ne!(two, other);
        for dir in ["/tmp/.tmpAbC9/run", "/", "/srv/Ünïcode dir/x..y", "/a/b"] {
            let name = default_cgroup_parent(Path::new(dir));
            assert!(valid_name(&name), "{dir}: {name}");
        }
        assert_eq!(
            default_cgroup_parent(Path::new("/tmp/.tmpAbC9/run")),
            default_cgroup_parent(Path::new("/tmp/.tmpAbC9/run"))
        );
    }

    #[test]
    fn host_names_are_normalized_and_validated() {
        assert_eq!(normalize_host("WWW.Example.COM."), "www.example.com");
        assert!(valid_host("a-b.example"));
        assert!(!valid_host("a..b"));
        assert!(!valid_host("a b"));
        assert!(!valid_host(""));
    }

    /// Validate the first route of a one-site file; the diagnostics as "line: key: message".
    fn route(text: &str) -> (Option<RouteConfig>, Vec<String>) {
        let source = Source::from_text(Path::new("site.toml"), text.to_string());
        let (file, diags) = source.deserialize::<SiteFile>();
        assert!(diags.is_empty(), "{diags:?}");
        let site = file.unwrap().site.into_iter().next().unwrap();
        let mut diags = Vec::new();
        let r = validate_route(
            &source,
            "site.0.route.0",
            &site.route[0],
            &Pool::default(),
            &mut diags,
        );
        let msgs = diags
            .iter()
            .map(|d| format!("{}: {}: {}", d.line, d.key, d.message))
            .collect();
        (r, msgs)
    }

    const SITE: &str =
        "[[site]]\nname = \"a.test\"\ntenant = \"a\"\nroot = \"/srv\"\n\n[[site.route]]\n";

    /// An unknown key names the known key of its section it is closest to, at its line.
    #[test]
    fn a_typo_names_the_key_meant() {
        let text = "[[site]]\nname = \"a.test\"\ntenant = \"a\"\nroot = \"/srv\"\ndeny_hiden = true\n\n\
                    [[site.route]]\nsuffix = \".php\"\nhandler = \"fastcgi\"\nprocesses = 2\ncomand = [\"php-cgi\"]\n";
        let source = Source::from_text(Path::new("site.toml"), text.to_string());
        let (_, diags) = source.deserialize::<SiteFile>();
        let mut msgs: Vec<String> = diags.iter().map(ToString::to_string).collect();
        msgs.sort();
        assert_eq!(
            msgs,
            [
                "site.toml:10:1: key `site.0.route.0.processes`: unknown key; did you mean `processes_max`?",
                "site.toml:11:1: key `site.0.route.0.comand`: unknown key; did you mean `command`?",
                "site.toml:5:1: key `site.0.deny_hiden`: unknown key; did you mean `deny_hidden`?",
            ]
        );
        let source = Source::from_text(Path::new("main.toml"), "[server]\nzzzzzz = 1\n".into());
        let (_, diags) = source.deserialize::<MainFile>();
        assert_eq!(
            diags[0].message,
            "unknown key (check the spelling; `man condo.toml` lists every key)"
        );
    }

    #[test]
    fn fastcgi_routes_are_validated() {
        let (r, msgs) = route(&format!(
            "{SITE}suffix = \".php\"\nhandler = \"fastcgi\"\ncommand = [\"php-cgi\"]\nidle_timeout = \"30s\"\n"
        ));
        assert!(msgs.is_empty(), "{msgs:?}");
        let f = r.unwrap().fastcgi.unwrap();
        assert_eq!(f.app, FastCgiApp::Command(vec!["php-cgi".into()]));
        assert_eq!(
            (f.processes_max, f.max_requests, f.idle_timeout),
            (4, 10_000, Some(Duration::from_secs(30)))
        );

        let (r, msgs) = route(&format!(
            "{SITE}suffix = \".php\"\nhandler = \"fastcgi\"\nsocket = \"/home/a/php.sock\"\n"
        ));
        assert!(msgs.is_empty(), "{msgs:?}");
        assert_eq!(
            r.unwrap().fastcgi.unwrap().app,
            FastCgiApp::Socket("/home/a/php.sock".into())
        );

        for (body, expected) in [
            (
                "suffix = \".php\"\nhandler = \"fastcgi\"\n",
                "needs `command`",
            ),
            (
                "suffix = \".php\"\nhandler = \"fastcgi\"\ncommand = [\"php-cgi\"]\nsocket = \"/s\"\n",
                "not both",
            ),
            (
                "suffix = \".php\"\nhandler = \"fastcgi\"\nsocket = \"rel.sock\"\n",
                "absolute",
            ),
            (
                "path = \"/app/\"\nhandler = \"fastcgi\"\ncommand = [\"php-cgi\"]\n",
                "matches by `suffix`",
            ),
            (
                "suffix = \".php\"\nhandler = \"fastcgi\"\ncommand = []\n",
                "must name a program",
            ),
            (
                "suffix = \".php\"\nhandler = \"fastcgi\"\ncommand = [\"php-cgi\"]\nprocesses_max = 0\n",
                "between 1 and 256",
            ),
            (
                "suffix = \".cgi\"\nhandler = \"cgi\"\ncommand = [\"php-cgi\"]\n",
                "only applies to handler = \"fastcgi\"",
            ),
            (
                "path = \"/s/\"\nhandler = \"static\"\nsocket = \"/s\"\n",
                "only applies to handler = \"fastcgi\"",
            ),
        ] {
            let (r, msgs) = route(&format!("{SITE}{body}"));
            assert!(r.is_none(), "{body}");
            assert!(
                msgs.iter().any(|m| m.contains(expected)),
                "{body}: {msgs:?}"
            );
            // Every message points into the route table (line 7 on).
            assert!(
                msgs.iter()
                    .all(|m| m.split(':').next().unwrap().parse::<usize>().unwrap() >= 6),
                "{msgs:?}"
            );
        }
    }

    #[test]
    fn app_routes_are_validated() {
        let (r, msgs) = route(&format!(
            "{SITE}path = \"/app/\"\nhandler = \"app\"\ncommand = [\"python3\", \"app.py\"]\nworkdir = \"/srv/app\"\nidle_timeout = \"5m\"\n"
        ));
        assert!(msgs.is_empty(), "{msgs:?}");
        let r = r.unwrap();
        assert_eq!(r.handler, Handler::App);
        assert_eq!(
            r.app.unwrap(),
            App {
                command: vec!["python3".into(), "app.py".into()],
                workdir: Some("/srv/app".into()),
                idle_timeout: Some(Duration::from_secs(300)),
            }
        );
        for (body, expected) in [
            ("path = \"/app/\"\nhandler = \"app\"\n", "needs `command`"),
            (
                "path = \"/app/\"\nhandler = \"app\"\ncommand = []\n",
                "must name a program",
            ),
            (
                "path = \"/app/\"\nhandler = \"app\"\ncommand = [\"x\"]\nworkdir = \"rel\"\n",
                "absolute",
            ),
            (
                "path = \"/app/\"\nhandler = \"app\"\ncommand = [\"x\"]\nsocket = \"/s\"\n",
                "only applies to handler = \"fastcgi\"",
            ),
            (
                "path = \"/app/\"\nhandler = \"app\"\ncommand = [\"x\"]\nprocesses_max = 2\n",
                "only applies to handler = \"fastcgi\"",
            ),
            (
                "path = \"/cgi-bin/\"\nhandler = \"cgi\"\nworkdir = \"/srv\"\n",
                "only applies to handler = \"fastcgi\" or handler = \"app\"",
            ),
            (
                "path = \"/s/\"\nhandler = \"static\"\ncommand = [\"x\"]\n",
                "only applies to handler = \"fastcgi\" or handler = \"app\"",
            ),
            ("path = \"/s/\"\nhandler = \"apps\"\n", "unknown handler"),
        ] {
            let (r, msgs) = route(&format!("{SITE}{body}"));
            assert!(r.is_none(), "{body}");
            assert!(
                msgs.iter().any(|m| m.contains(expected)),
                "{body}: {msgs:?}"
            );
            assert!(
                msgs.iter()
                    .all(|m| m.split(':').next().unwrap().parse::<usize>().unwrap() >= 6),
                "{msgs:?}"
            );
        }
    }

    #[test]
    fn tenant_names_are_restricted() {
        assert!(valid_name("alice_2"));
        assert!(!valid_name("Alice"));
        assert!(!valid_name("../x"));
    }

    /// A main file with three tenants (system accounts that exist everywhere): one
    /// with nothing set, one with its own caps, one explicitly unlimited.
    #[test]
    fn limits_default_to_safe_caps_and_check_warns_where_there_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("condo.toml");
        std::fs::create_dir(dir.path().join("sites")).unwrap();
        std::fs::write(
            &main,
            "[server]\nlisten = [\"127.0.0.1:0\"]\nuser = \"nobody\"\nuid_range = [1, 65534]\n\
             [tenant.plain]\nuser = \"daemon\"\n\
             [tenant.capped]\nuser = \"bin\"\nmemory_max = \"256M\"\npids_max = 64\n\
             [tenant.open]\nuser = \"sys\"\nmemory_max = \"max\"\npids_max = \"max\"\n",
        )
        .unwrap();
        let loaded = load(&main);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let config = loaded.config.unwrap();
        let limits = |t: &str| config.tenants[t].limits.clone();
        assert_eq!(limits("plain").memory_max, Some(limits::DEFAULT_MEMORY_MAX));
        assert_eq!(limits("plain").pids_max, Some(limits::DEFAULT_PIDS_MAX));
        assert_eq!(limits("capped").memory_max, Some(256 << 20));
        assert_eq!(limits("capped").pids_max, Some(64));
        assert_eq!(limits("open").memory_max, None);
        assert_eq!(limits("open").pids_max, None);
        let warnings: Vec<String> = config.warnings().iter().map(|w| w.key.clone()).collect();
        assert_eq!(
            warnings,
            ["tenant.open.memory_max", "tenant.open.pids_max"],
            "only the explicitly unlimited tenant is warned about"
        );
    }
}
