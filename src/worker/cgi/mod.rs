//! CGI/1.1 (RFC 3875) scripts, run by the worker as the tenant: one process per
//! request, request body on stdin, CGI response head parsed, body streamed back.
//!
//! The worker already runs as the tenant with no_new_privs, so the script runs with
//! exactly the tenant's rights. Before running it, the checks suexec makes: a regular
//! file below the site root, owned by the tenant, executable, neither it nor its
//! directory writable by group or others.

pub mod env;
pub mod response;

use std::ffi::OsString;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bytes::{Buf, BytesMut};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::process::Child;
use tokio::time::Instant;
use tracing::warn;

use super::response::{Framing, response_head};
use super::stream::Stream;
use super::{SiteState, Tenant};
use crate::config::{RouteConfig, RouteMatch};
use crate::http::head::{BodyFraming, RequestHead, Version};
use crate::http::io::{ChunkedPayload, relay_body};
use response::{CgiHead, Location, parse_cgi_head};

/// A chunked request body is read whole before the script starts (it must know
/// CONTENT_LENGTH), up to the site's `max_body`: up to this size in memory, beyond it
/// in an unnamed spool file, so that a worker holds at most this much of each body
/// whatever `max_body` allows.
const CHUNKED_IN_MEMORY: usize = 1024 * 1024;
/// Where spooled chunked bodies go, first that works: unnamed files (`O_TMPFILE`),
/// which no other process can open by name, gone when closed. Scratch directories
/// the tenant's own (a cage's tmpfs is charged to its memory).
const SPOOL_DIRS: [&str; 2] = ["/var/tmp", "/tmp"];
/// A Content-Length body up to this size is read whole before the script starts, as
/// nginx buffers request bodies: a client that sends its form slowly (R-U-Dead-Yet)
/// then holds a socket and a buffer, not a script process or a slot of the tenant's
/// FastCGI pool, and gets its 408 on time however slowly processes start. Larger
/// bodies (uploads) stream into the script as they arrive, so memory stays bounded.
const BUFFERED_BODY_MAX: u64 = 1024 * 1024;
const MAX_CGI_HEAD: usize = 64 * 1024;

pub struct CgiCall<'a> {
    pub tenant: &'a Tenant,
    pub site: &'a SiteState,
    pub route: &'a RouteConfig,
    pub head: &'a RequestHead,
    /// The request path, percent-decoded and normalised.
    pub path: &'a str,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The client's connection is HTTPS.
    pub secure: bool,
    /// This call serves the site's error page for a request that failed with this
    /// status (`error_pages`): REDIRECT_* variables say so, a script's 200 becomes
    /// this status, and a page that fails itself gets condo's plain page.
    pub error: Option<env::Redirect<'a>>,
}

pub enum CgiOutcome {
    Responded {
        status: u16,
        sent: u64,
        keep_alive: bool,
    },
    /// The script answered with a local `Location`: serve that path instead.
    LocalRedirect(String),
    /// Nothing was sent: the request failed with this status before any of the
    /// response went out, and the site has an error page for it (`error_pages`). The
    /// connection ends after that page (the body may be unread).
    Failed(u16),
}

/// A failure before any byte of the response was sent: answered with `status`, and
/// `reason` goes to the site's error log.
pub(super) struct Refusal {
    status: u16,
    reason: String,
    /// A tenant limit was met (503): the answer asks the client to retry later.
    retry_after: bool,
}

pub(super) fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
        retry_after: false,
    }
}

impl Refusal {
    pub(super) fn is_status(&self, status: u16) -> bool {
        self.status == status
    }
}

/// A request that met one of the tenant's limits (`memory_max`, `pids_max`): 503 with
/// Retry-After, and `reason` (naming the limit) in the site's error log.
pub(super) fn at_limit(reason: impl Into<String>) -> Refusal {
    Refusal {
        status: 503,
        reason: reason.into(),
        retry_after: true,
    }
}

/// A process of a script handler could not be started: at the tenant's process limit
/// that is a 503 naming it, anything else a 500.
pub(super) fn spawn_failed(call: &CgiCall<'_>, what: &str, e: &io::Error) -> Refusal {
    match call.tenant.caps.spawn_limit(e) {
        Some(limit) => at_limit(format!("cannot start {what}: {limit}")),
        None => refuse(500, format!("cannot run {what}: {e}")),
    }
}

pub(super) struct Script {
    /// Path below the site root, without a leading '/'.
    pub relative: String,
    pub script_name: String,
    pub path_info: String,
}

/// What a handler requires of the file a request names, besides being below the root.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ScriptRules {
    /// suexec's checks: owned by the tenant, executable, not writable by others.
    Cgi,
    /// A regular file only (its contents are read by the app, not executed).
    FastCgi,
}

pub async fn serve(
    call: CgiCall<'_>,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> io::Result<CgiOutcome> {
    let deadline = Instant::now() + call.route.timeout;
    let mut slot = None;
    let result = tokio::time::timeout_at(deadline, run(&call, stream, buf, &mut slot)).await;
    // Still here only when `run` did not finish: kill what it started.
    let head_sent = slot.as_ref().is_some_and(|r: &Running| r.head_sent);
    let mut result = result.ok();
    // A script whose output ended before its head may have been killed at the tenant's
    // memory_max: then that is what the client and the site log are told.
    if let (Some(Err(Failure::Refused(refusal))), Some(running)) = (&mut result, slot.as_mut())
        && refusal.status == 502
        && !head_sent
        && call
            .tenant
            .caps
            .killed_by_oom(&mut running.child, running.oom_before)
            .await
    {
        *refusal = at_limit(call.tenant.caps.oom_message());
    }
    if let Some(running) = slot.take() {
        running.kill();
    }
    finish(&call, stream, result, head_sent).await
}

/// The end every script handler shares: an outcome goes back as it is; a refusal or a
/// timeout (`None`) is logged and answered with an error page, or ends the connection
/// when part of the response is already out.
pub(super) async fn finish(
    call: &CgiCall<'_>,
    stream: &mut Stream,
    result: Option<Result<CgiOutcome, Failure>>,
    head_sent: bool,
) -> io::Result<CgiOutcome> {
    let refusal = match result {
        Some(Ok(outcome)) => return Ok(outcome),
        Some(Err(Failure::Io(e))) => return Err(e),
        Some(Err(Failure::Refused(r))) => r,
        None => {
            // In condo's error log too: the admin sees which tenant's requests hang.
            tracing::warn!(
                tenant = call.tenant.name,
                site = call.site.config.name,
                uri = call.head.target,
                "504: request ran past its timeout of {:?}; its process was killed",
                call.route.timeout
            );
            refuse(
                504,
                format!("killed after the route timeout of {:?}", call.route.timeout),
            )
        }
    };
    let message = format!(
        "{} {}: {}",
        call.head.method.as_str(),
        call.path,
        refusal.reason
    );
    if matches!(refusal.status, 400 | 408 | 413) {
        // A client's fault: the site's own log says so, but condo's log is not for
        // what any client can cause at will, once per request.
        log_site(call.site, &message);
    } else {
        log_error(call.site, &message);
    }
    if head_sent {
        // Part of the response is out: closing is the only honest end.
        return Err(io::Error::new(io::ErrorKind::TimedOut, refusal.reason));
    }
    // The site's own page, unless this already is one (no loops).
    if call.error.is_none() && call.site.config.error_page(refusal.status).is_some() {
        return Ok(CgiOutcome::Failed(refusal.status));
    }
    // An error page that fails answers with the status of the error it was for.
    let status = call.error.as_ref().map_or(refusal.status, |e| e.status);
    let retry = if refusal.retry_after && call.error.is_none() {
        format!("Retry-After: {}\r\n", super::caps::RETRY_AFTER)
    } else {
        String::new()
    };
    let head_only = call.head.is_head();
    let page = crate::http::error_response_with(status, false, head_only, &retry);
    stream.write_all(&page).await?;
    Ok(CgiOutcome::Responded {
        status,
        sent: crate::http::error_body_len(status, head_only),
        keep_alive: false,
    })
}

pub(super) enum Failure {
    Refused(Refusal),
    Io(io::Error),
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Failure::Refused(r)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

/// The script's process; killed with its whole process group when dropped early.
struct Running {
    child: Child,
    head_sent: bool,
    /// The tenant group's OOM kills when the script started.
    oom_before: Option<u64>,
}

impl Running {
    fn kill(mut self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.start_kill();
        // Reap in the background so no zombie is left.
        tokio::spawn(async move {
            let _ = self.child.wait().await;
        });
    }
}

async fn run(
    call: &CgiCall<'_>,
    stream: &mut Stream,
    buf: &mut BytesMut,
    slot: &mut Option<Running>,
) -> Result<CgiOutcome, Failure> {
    let files = call
        .site
        .files
        .as_ref()
        .map_err(|reason| refuse(500, reason.clone()))?;
    let script = locate(&files.root, call.path, call.route, ScriptRules::Cgi)?;
    let script_file = call.site.config.root.join(&script.relative);
    let directory = script_file
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| call.site.config.root.clone());
    let (content_length, mut whole_body) = read_body(call, stream, buf).await?;
    let limits = &call.tenant.limits;
    let variables = meta_variables(call, &script, &script_file, content_length);
    let mut command = tokio::process::Command::new(&script_file);
    command
        .env_clear()
        .envs(variables)
        .current_dir(&directory)
        .stdin(match whole_body.take() {
            // A spooled body is the script's stdin itself: nothing to copy.
            Some(WholeBody::File(file)) => Stdio::from(file),
            Some(body @ WholeBody::Bytes(_)) => {
                whole_body = Some(body);
                Stdio::piped()
            }
            None if content_length.unwrap_or(0) > 0 => Stdio::piped(),
            None => Stdio::null(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever the script started too.
        .process_group(0)
        .kill_on_drop(true);
    crate::sandbox::site_child(&mut command, &call.site.config);
    let oom_before = call.tenant.caps.oom_kills();
    let mut child = command
        .spawn()
        .map_err(|e| spawn_failed(call, &script.script_name, &e))?;
    let stdin = child.stdin.take();
    let mut stdout = child.stdout.take().expect("piped");
    if let Some(stderr) = child.stderr.take() {
        copy_stderr(call.site, script.script_name.clone(), stderr);
    }
    *slot = Some(Running {
        child,
        head_sent: false,
        oom_before,
    });

    let feed = async {
        let Some(mut stdin) = stdin else {
            return Ok(());
        };
        let fed = match (&whole_body, &call.head.body) {
            (Some(WholeBody::Bytes(body)), _) => stdin.write_all(body).await,
            (Some(WholeBody::File(_)), _) => Ok(()),
            (None, framing) => {
                relay_body(stream, buf, Some(&mut stdin), framing, limits.body_timeout)
                    .await
                    .map(drop)
            }
        };
        match fed {
            // A script may answer without reading its input; that is its right.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    };
    let mut out = BytesMut::with_capacity(8 * 1024);
    let cgi_head = feed_then_head(
        async { feed.await.map_err(|e| body_failure(call, e)) },
        read_cgi_head(&mut stdout, &mut out),
    )
    .await?;
    let cgi_head = as_error_page(call, cgi_head);
    // The flag lives in the slot, so a timeout that drops this future mid-body still
    // sees that the head went out.
    let running = slot.as_mut().expect("set when the script started");
    let outcome = answer(
        call.head,
        crate::worker::response::site_headers(call.site, call.secure),
        cgi_head,
        out,
        &mut stdout,
        stream,
        &mut running.head_sent,
    )
    .await?;
    if let Some(mut running) = slot.take() {
        let status = running.child.wait().await?;
        let oom = running
            .oom_before
            .is_some_and(|before| call.tenant.caps.oom_kill_of(status, before));
        if oom {
            log_error(
                call.site,
                &format!(
                    "{}: {} (after its response began)",
                    script.script_name,
                    call.tenant.caps.oom_message()
                ),
            );
        } else if !status.success() {
            log_error(
                call.site,
                &format!("{}: exited with {status}", script.script_name),
            );
        }
    }
    Ok(outcome)
}

/// A request body read whole before the script starts.
pub(super) enum WholeBody {
    Bytes(Vec<u8>),
    /// A chunked body past [`CHUNKED_IN_MEMORY`], in an unnamed file, rewound.
    File(std::fs::File),
}

/// The request body for a script: `(CONTENT_LENGTH, the whole body if it was read
/// first)`. A small Content-Length body is read whole (see `BUFFERED_BODY_MAX`), a
/// larger one is left in the stream, to be relayed; a chunked one is read whole
/// (CONTENT_LENGTH must be known before the script starts), spooled past
/// [`CHUNKED_IN_MEMORY`]. Either is refused (413) past the site's `max_body`: a
/// Content-Length before any of it is read, a chunked one at the chunk that crosses it.
pub(super) async fn read_body(
    call: &CgiCall<'_>,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<(Option<u64>, Option<WholeBody>), Failure> {
    let max_body = call.site.config.max_body;
    if let BodyFraming::Length(n) = call.head.body
        && n > max_body
    {
        // conn.rs answers these before any handler; this keeps the rule where the
        // body is read too.
        return Err(refuse(413, over_max_body(max_body)).into());
    }
    if call.head.expect_continue && !matches!(call.head.body, BodyFraming::None) {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    Ok(match &call.head.body {
        BodyFraming::None => (None, None),
        BodyFraming::Length(n) if *n <= BUFFERED_BODY_MAX => {
            let idle = call.tenant.limits.body_timeout;
            let mut body = Vec::with_capacity(*n as usize);
            relay_body(stream, buf, Some(&mut body), &call.head.body, idle)
                .await
                .map_err(|e| body_failure(call, e))?;
            (Some(*n), Some(WholeBody::Bytes(body)))
        }
        BodyFraming::Length(n) => (Some(*n), None),
        BodyFraming::Chunked => {
            let (len, body) = read_chunked(call, stream, buf, max_body).await?;
            (Some(len), Some(body))
        }
    })
}

/// A chunked body, whole: in memory up to [`CHUNKED_IN_MEMORY`], then in a spool file.
async fn read_chunked(
    call: &CgiCall<'_>,
    stream: &mut Stream,
    buf: &mut BytesMut,
    max_body: u64,
) -> Result<(u64, WholeBody), Failure> {
    let idle = call.tenant.limits.body_timeout;
    let mut payload = ChunkedPayload::new(max_body);
    let mut memory = Vec::new();
    let mut spool: Option<tokio::fs::File> = None;
    let mut total = 0u64;
    let spool_failed = |e: io::Error| refuse(500, format!("spooling a chunked body: {e}"));
    while let Some(data) = payload
        .next(stream, buf, idle)
        .await
        .map_err(|e| body_failure(call, e))?
    {
        total += data.len() as u64;
        match &mut spool {
            // tokio's File writes on its blocking pool, never on this thread.
            Some(file) => file.write_all(&data).await.map_err(spool_failed)?,
            None if memory.len() + data.len() > CHUNKED_IN_MEMORY => {
                let mut file = tokio::fs::File::from_std(spool_file().map_err(spool_failed)?);
                file.write_all(&memory).await.map_err(spool_failed)?;
                file.write_all(&data).await.map_err(spool_failed)?;
                memory = Vec::new();
                spool = Some(file);
            }
            None => memory.extend_from_slice(&data),
        }
    }
    let body = match spool {
        None => WholeBody::Bytes(memory),
        Some(mut file) => {
            file.flush().await.map_err(spool_failed)?;
            file.seek(io::SeekFrom::Start(0))
                .await
                .map_err(spool_failed)?;
            WholeBody::File(file.into_std().await)
        }
    };
    Ok((total, body))
}

/// An unnamed file for a spooled body, opened by the worker as the tenant.
fn spool_file() -> io::Result<std::fs::File> {
    let mut last = io::Error::other("no spool directory");
    for dir in SPOOL_DIRS {
        match rustix::fs::open(
            dir,
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => return Ok(std::fs::File::from(fd)),
            Err(e) => last = io::Error::new(io::Error::from(e).kind(), format!("{dir}: {e}")),
        }
    }
    Err(last)
}

fn over_max_body(max_body: u64) -> String {
    format!("request body over the site's max_body of {max_body} bytes")
}

/// A script's response when it serves an error page: its default status (200)
/// becomes the status of the error it answers, as Apache's ErrorDocument keeps it.
pub(super) fn as_error_page(call: &CgiCall<'_>, mut head: CgiHead) -> CgiHead {
    if let Some(error) = &call.error
        && head.status == 200
    {
        head.status = error.status;
        head.reason = None;
    }
    head
}

/// Feed the request body and read the response head together (a script may answer
/// before it read its input). A failed feed ends both at once: a client whose body
/// stalls gets its 408 now, not when the script, still waiting for input, times out.
pub(super) async fn feed_then_head<T>(
    feed: impl std::future::Future<Output = Result<(), Failure>>,
    read: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::pin!(feed, read);
    let mut fed = false;
    loop {
        tokio::select! {
            f = &mut feed, if !fed => {
                f?;
                fed = true;
            }
            r = &mut read => {
                // The body's failure, if it has one, says more than the head's.
                if !fed {
                    feed.await?;
                }
                return r;
            }
        }
    }
}

/// A request body that could not be read: the client's fault is answered as such
/// (408 stalled, 400 malformed, 413 over the limit), anything else ends the connection.
pub(super) fn body_failure(call: &CgiCall<'_>, e: io::Error) -> Failure {
    match crate::http::io::client_fault(&e) {
        Some(413) => refuse(413, over_max_body(call.site.config.max_body)).into(),
        Some(status) => refuse(status, format!("reading the request body: {e}")).into(),
        None => e.into(),
    }
}

/// The CGI meta-variables for `script` (environment for CGI, FCGI_PARAMS for FastCGI).
pub(super) fn meta_variables(
    call: &CgiCall<'_>,
    script: &Script,
    script_file: &Path,
    content_length: Option<u64>,
) -> Vec<(OsString, OsString)> {
    env::meta_variables(&env::CgiRequest {
        method: call.head.method.as_str(),
        request_uri: &call.head.target,
        query: call.head.query.as_deref(),
        protocol: version_str(call.head.version),
        headers: &call.head.headers,
        remote: call.peer,
        local: call.local,
        // The name the client asked for, as Apache's UseCanonicalName Off gives it
        // (only ever one of the site's own names: requests are routed by them).
        server_name: call
            .head
            .host
            .as_deref()
            .filter(|h| crate::worker::response::serves_host(call.site, h))
            .unwrap_or(&call.site.config.name),
        https: call.secure,
        document_root: &call.site.config.root,
        script_name: &script.script_name,
        script_filename: script_file,
        path_info: &script.path_info,
        content_length,
        site_env: &call.site.config.env,
        redirect: call.error.clone(),
    })
}

/// Everything after the script's response head was parsed, shared by CGI and FastCGI:
/// a local redirect, or the HTTP response with the rest of `body` (`out` holds what was
/// already read after the head start). `head_sent` turns true once bytes went out.
pub(super) async fn answer<R: AsyncRead + Unpin>(
    request: &RequestHead,
    site_header: Option<(&'static str, &str)>,
    cgi_head: CgiHead,
    mut out: BytesMut,
    body: &mut R,
    stream: &mut Stream,
    head_sent: &mut bool,
) -> io::Result<CgiOutcome> {
    out.advance(cgi_head.head_len);
    match &cgi_head.location {
        Some(Location::Local(path)) if cgi_head.status == 200 => {
            return Ok(CgiOutcome::LocalRedirect(path.clone()));
        }
        _ => {}
    }
    let head_only = request.is_head() || cgi_head.status == 204 || cgi_head.status == 304;
    // What the script has written already, without waiting: most responses are whole
    // by now, and then go out in one write with a Content-Length (no chunked framing,
    // and one send instead of head, chunk and terminator).
    let complete = !head_only
        && cgi_head.content_length.is_none()
        && gather_ready(body, &mut out, GATHER_MAX).await?;
    let framing = match (head_only, cgi_head.content_length, request.version) {
        (true, Some(n), _) => Framing::HeadOnly(Some(n)),
        (true, None, _) => Framing::HeadOnly(None),
        (false, Some(n), _) => Framing::Length(n),
        (false, None, _) if complete => Framing::Length(out.len() as u64),
        (false, None, Version::Http11) => Framing::Chunked,
        (false, None, Version::Http10) => Framing::UntilClose,
    };
    let keep_alive = request.keep_alive && !matches!(framing, Framing::UntilClose);
    let mut headers: Vec<(&str, &str)> = cgi_head
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    if let Some(Location::Client(uri) | Location::Local(uri)) = &cgi_head.location {
        headers.push(("Location", uri));
    }
    headers.extend(site_header);
    let reason = cgi_head
        .reason
        .as_deref()
        .unwrap_or(crate::http::reason(cgi_head.status));
    let mut first = response_head(
        cgi_head.status,
        reason,
        &headers,
        framing,
        keep_alive,
        request.version,
    );
    *head_sent = true;
    // The head and the body bytes already here share the first write.
    let sent = match framing {
        Framing::HeadOnly(_) => {
            stream.write_all(&first).await?;
            0
        }
        Framing::Length(n) => {
            let take = (out.len() as u64).min(n) as usize;
            first.extend_from_slice(&out[..take]);
            stream.write_all(&first).await?;
            out.clear();
            if take as u64 == n {
                n
            } else {
                take as u64 + copy_exact(&mut out, body, stream, n - take as u64).await?
            }
        }
        Framing::Chunked => {
            push_chunk(&mut first, &out);
            let already = out.len() as u64;
            out.clear();
            stream.write_all(&first).await?;
            already + copy_chunked(&mut out, body, stream).await?
        }
        Framing::UntilClose => {
            first.extend_from_slice(&out);
            let already = out.len() as u64;
            out.clear();
            stream.write_all(&first).await?;
            already + copy_until_eof(&mut out, body, stream).await?
        }
    };
    // A script that sent less than its Content-Length broke the framing.
    let complete = match framing {
        Framing::Length(n) => sent == n,
        _ => true,
    };
    Ok(CgiOutcome::Responded {
        status: cgi_head.status,
        sent,
        keep_alive: keep_alive && complete,
    })
}

/// Body bytes gathered before the head goes out, at most: past this the response is
/// streamed (chunked) rather than held.
const GATHER_MAX: usize = 64 * 1024;

/// Read what `body` has ready now, without waiting, up to `max` bytes in `out`.
/// `Ok(true)`: the body ended (all of it is in `out`).
async fn gather_ready<R: AsyncRead + Unpin>(
    body: &mut R,
    out: &mut BytesMut,
    max: usize,
) -> io::Result<bool> {
    while out.len() < max {
        out.reserve(16 * 1024);
        // One poll of a read: data or the end if they are there, else stop gathering
        // (a script that streams its output must not be held back).
        let ready = std::future::poll_fn(|cx| {
            let read = std::pin::pin!(body.read_buf(out));
            match std::future::Future::poll(read, cx) {
                std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
                std::task::Poll::Pending => std::task::Poll::Ready(None),
            }
        })
        .await;
        match ready {
            None => return Ok(false),
            Some(Ok(0)) => return Ok(true),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
        }
    }
    Ok(false)
}

/// One chunk of a chunked body (nothing for no bytes: an empty chunk would end it).
fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::Http10 => "HTTP/1.0",
        Version::Http11 => "HTTP/1.1",
    }
}

/// Find the script a request path names, and the PATH_INFO after it.
pub(super) fn locate(
    root: &OwnedFd,
    path: &str,
    route: &RouteConfig,
    rules: ScriptRules,
) -> Result<Script, Refusal> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut relative = String::new();
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            break;
        }
        if !relative.is_empty() {
            relative.push('/');
        }
        relative.push_str(segment);
        let url_path = format!("/{relative}");
        let wanted = match &route.matcher {
            RouteMatch::Prefix(prefix) => url_path.len() >= prefix.trim_end_matches('/').len(),
            RouteMatch::Suffix(suffix) => segment.ends_with(suffix.as_str()),
        };
        let fd = rustix::fs::openat2(
            root,
            relative.as_str(),
            OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        );
        let fd = match fd {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => {
                return Err(refuse(404, format!("no script at {url_path}")));
            }
            Err(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM) => {
                return Err(refuse(403, format!("{url_path}: permission denied")));
            }
            Err(e) => return Err(refuse(404, format!("{url_path}: {e}"))),
        };
        let stat =
            rustix::fs::fstat(&fd).map_err(|e| refuse(500, format!("stat {url_path}: {e}")))?;
        let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
        if kind == rustix::fs::FileType::Directory {
            continue;
        }
        if !wanted {
            return Err(refuse(
                404,
                format!("{url_path} is not a script of this route"),
            ));
        }
        match rules {
            ScriptRules::Cgi => check_script(root, &relative, &stat)?,
            ScriptRules::FastCgi => {
                if kind != rustix::fs::FileType::RegularFile {
                    return Err(refuse(403, format!("{url_path} is not a regular file")));
                }
            }
        }
        let rest = segments[i + 1..].join("/");
        let path_info = if rest.is_empty() && !path.ends_with(&format!("{segment}/")) {
            String::new()
        } else {
            format!("/{rest}")
        };
        return Ok(Script {
            script_name: url_path,
            relative,
            path_info,
        });
    }
    Err(refuse(
        403,
        format!("{path} names a directory, not a script"),
    ))
}

/// suexec's rules, against the tenant's own mistakes and against another account
/// planting a script: the tenant must own it and nobody else may change it.
fn check_script(root: &OwnedFd, relative: &str, stat: &rustix::fs::Stat) -> Result<(), Refusal> {
    let uid = rustix::process::geteuid().as_raw();
    let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    if kind != rustix::fs::FileType::RegularFile {
        return Err(refuse(403, format!("/{relative} is not a regular file")));
    }
    if stat.st_uid != uid {
        return Err(refuse(
            403,
            format!(
                "/{relative} is owned by uid {}, not by this tenant (uid {uid})",
                stat.st_uid
            ),
        ));
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(refuse(
            403,
            format!(
                "/{relative} is writable by group or others (mode {:o})",
                stat.st_mode & 0o7777
            ),
        ));
    }
    if stat.st_mode & 0o100 == 0 {
        return Err(refuse(
            403,
            format!(
                "/{relative} is not executable by its owner (mode {:o})",
                stat.st_mode & 0o7777
            ),
        ));
    }
    let parent = relative.rsplit_once('/').map_or(".", |(dir, _)| dir);
    let dir = rustix::fs::openat2(
        root,
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH,
    )
    .and_then(|d| rustix::fs::fstat(&d))
    .map_err(|e| refuse(500, format!("stat of the directory of /{relative}: {e}")))?;
    if dir.st_mode & 0o022 != 0 {
        return Err(refuse(
            403,
            format!("the directory of /{relative} is writable by group or others"),
        ));
    }
    Ok(())
}

pub(super) async fn read_cgi_head<R: AsyncRead + Unpin>(
    stdout: &mut R,
    out: &mut BytesMut,
) -> Result<CgiHead, Failure> {
    loop {
        match parse_cgi_head(out, MAX_CGI_HEAD) {
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            Err(e) => {
                return Err(refuse(502, format!("bad response head from the script: {e}")).into());
            }
        }
        out.reserve(8 * 1024);
        if stdout.read_buf(out).await? == 0 {
            return Err(refuse(502, "the script ended without a complete response head").into());
        }
    }
}

async fn copy_exact<R: AsyncRead + Unpin>(
    out: &mut BytesMut,
    stdout: &mut R,
    stream: &mut Stream,
    length: u64,
) -> io::Result<u64> {
    let mut sent = 0u64;
    loop {
        let take = (out.len() as u64).min(length - sent) as usize;
        stream.write_all(&out[..take]).await?;
        sent += take as u64;
        out.clear();
        if sent == length || stdout.read_buf(out).await? == 0 {
            return Ok(sent);
        }
    }
}

pub(super) async fn copy_chunked<R: AsyncRead + Unpin>(
    out: &mut BytesMut,
    stdout: &mut R,
    stream: &mut Stream,
) -> io::Result<u64> {
    let mut sent = 0u64;
    let mut chunk = Vec::with_capacity(16 * 1024 + 16);
    loop {
        // Bytes already here go out at once; otherwise wait for some. Then whatever
        // else is ready joins them: fewer, larger chunks, and the last one and the
        // terminator in one write.
        let ended = if out.is_empty() {
            out.reserve(16 * 1024);
            stdout.read_buf(out).await? == 0 || gather_ready(stdout, out, GATHER_MAX).await?
        } else {
            gather_ready(stdout, out, GATHER_MAX).await?
        };
        chunk.clear();
        push_chunk(&mut chunk, out);
        sent += out.len() as u64;
        out.clear();
        if ended {
            chunk.extend_from_slice(b"0\r\n\r\n");
            stream.write_all(&chunk).await?;
            return Ok(sent);
        }
        stream.write_all(&chunk).await?;
    }
}

pub(super) async fn copy_until_eof<R: AsyncRead + Unpin>(
    out: &mut BytesMut,
    stdout: &mut R,
    stream: &mut Stream,
) -> io::Result<u64> {
    let mut sent = out.len() as u64;
    stream.write_all(out).await?;
    out.clear();
    sent += tokio::io::copy(stdout, stream).await?;
    Ok(sent)
}

pub(super) fn copy_stderr<R: AsyncRead + Unpin + Send + 'static>(
    site: &SiteState,
    script: String,
    stderr: R,
) {
    // The slot, not the file: the log may be reopened (or, for a warm process started
    // with the worker, arrive) while this process runs.
    let log = site.error_log.clone();
    let site_name = site.config.name.clone();
    // Escaped, cut at MAX_LINE, and rate-limited per site (all its scripts together):
    // the disk the logs share is not the tenant's to fill.
    let source = format!("site {site_name}");
    let script = crate::logging::escape(script.as_bytes(), 256);
    tokio::spawn(async move {
        crate::logging::copy_lines(stderr, &source, |line| {
            let text = format!(
                "{} [{site_name}] {script}: {line}\n",
                crate::http::http_date()
            );
            log.write(text.as_bytes());
        })
        .await;
    });
}

pub(super) fn log_error(site: &SiteState, message: &str) {
    warn!(site = site.config.name, "cgi: {message}");
    log_site(site, message);
}

/// A line in the site's error log only.
pub(super) fn log_site(site: &SiteState, message: &str) {
    let line = format!(
        "{} [{}] condo: {}\n",
        crate::http::http_date(),
        site.config.name,
        crate::logging::escape(message.as_bytes(), crate::logging::MAX_LINE)
    );
    site.error_log.write(line.as_bytes());
}
