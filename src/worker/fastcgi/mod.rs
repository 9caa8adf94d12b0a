//! `handler = "fastcgi"`: requests for files with the route's suffix go to the
//! tenant's FastCGI app (php-cgi), which condo runs and pools inside the tenant's
//! worker ([`pool`]), or, with `socket`, to an app the tenant runs itself — only if the
//! process behind that socket runs as this tenant (PHP-FPM lets one vhost use another
//! user's pool; condo must not).
//!
//! The request is CGI in FastCGI records: the same meta-variables, script lookup and
//! response handling as [`super::cgi`].

pub mod pool;
pub mod record;

use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use super::cgi::{
    CgiCall, CgiOutcome, Failure, ScriptRules, WholeBody, answer, as_error_page, at_limit,
    body_failure, feed_then_head, finish, locate, log_error, meta_variables, read_body,
    read_cgi_head, refuse,
};
use super::stream::Stream;
use crate::config::{FastCgiApp, RouteMatch};
use crate::http::io::relay_body;
use pool::{Lease, Pool};

/// The one request on each connection (keep_conn is off: the app closes it after).
const REQUEST_ID: u16 = 1;

/// A site's pools, one per fastcgi route that runs a `command` (same index as routes).
pub fn pools_for(site: &crate::config::Site) -> Vec<Option<Arc<Pool>>> {
    site.routes
        .iter()
        .map(|r| match &r.fastcgi {
            Some(f) => match &f.app {
                FastCgiApp::Command(argv) => Some(Pool::new(argv.clone(), f.clone())),
                FastCgiApp::Socket(_) => None,
            },
            None => None,
        })
        .collect()
}

/// What a timeout must clean up: the lent process (killed when dropped unreleased).
#[derive(Default)]
struct Exchange {
    lease: Option<Lease>,
    head_sent: bool,
    /// The tenant group's OOM kills before the request went to the process.
    oom_before: Option<u64>,
}

pub async fn serve(
    call: CgiCall<'_>,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> io::Result<CgiOutcome> {
    let deadline = Instant::now() + call.route.timeout;
    let mut slot = Exchange::default();
    let result = tokio::time::timeout_at(deadline, run(&call, stream, buf, &mut slot)).await;
    let head_sent = slot.head_sent;
    let mut result = result.ok();
    // A process whose output ended before the head may have been killed at the
    // tenant's memory_max (php-cgi with a greedy script): then that is what the
    // client and the site log are told.
    if let (Some(Err(Failure::Refused(refusal))), Some(lease)) = (&mut result, &mut slot.lease)
        && refusal.is_status(502)
        && !head_sent
        && call
            .tenant
            .caps
            .killed_by_oom(lease.process.child_mut(), slot.oom_before)
            .await
    {
        *refusal = at_limit(call.tenant.caps.oom_message());
    }
    // A lease still here was not released by a clean end (timeout, error): the
    // process and its group are killed, the next request gets a fresh one.
    drop(slot.lease.take());
    finish(&call, stream, result, head_sent).await
}

/// Stops the record reader when the request is over, however it ended.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run(
    call: &CgiCall<'_>,
    stream: &mut Stream,
    buf: &mut BytesMut,
    slot: &mut Exchange,
) -> Result<CgiOutcome, Failure> {
    let files = call
        .site
        .files
        .as_ref()
        .map_err(|reason| refuse(500, reason.clone()))?;
    let Some(fastcgi) = &call.route.fastcgi else {
        return Err(refuse(500, "fastcgi route without an app").into());
    };
    let script = locate(&files.root, call.path, call.route, ScriptRules::FastCgi)?;
    // Only files with the route's suffix ever reach the app (config requires a
    // suffix route; checked again here because this is the security boundary).
    let RouteMatch::Suffix(suffix) = &call.route.matcher else {
        return Err(refuse(500, "fastcgi route without a suffix").into());
    };
    if !script.relative.ends_with(suffix.as_str()) {
        return Err(refuse(
            403,
            format!("{} does not end with {suffix}", script.script_name),
        )
        .into());
    }
    let script_file = call.site.config.root.join(&script.relative);
    let (content_length, whole_body) = read_body(call, stream, buf).await?;
    let params = meta_variables(call, &script, &script_file, content_length);

    let conn = match &fastcgi.app {
        FastCgiApp::Command(_) => {
            let pool = pool_of(call)?;
            let (conn, lease) = connect_pooled(&pool, call).await?;
            slot.oom_before = call.tenant.caps.oom_kills();
            slot.lease = Some(lease);
            conn
        }
        FastCgiApp::Socket(path) => connect_tenant_socket(path).await?,
    };
    let (reader, mut writer) = conn.into_split();

    let mut request = Vec::with_capacity(4096);
    record::begin_request(&mut request, REQUEST_ID, false);
    let pairs: Vec<(&[u8], &[u8])> = params
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect();
    record::stream(
        &mut request,
        record::PARAMS,
        REQUEST_ID,
        &record::encode_params(&pairs),
    );
    record::stream(&mut request, record::PARAMS, REQUEST_ID, &[]);
    // A body already in hand (none, for most requests) goes in the same write as the
    // params: one send and one wake-up of the app instead of two.
    let mut spooled = None;
    let body_in_hand = match whole_body {
        Some(WholeBody::Bytes(body)) => {
            if !body.is_empty() {
                record::stream(&mut request, record::STDIN, REQUEST_ID, &body);
            }
            record::stream(&mut request, record::STDIN, REQUEST_ID, &[]);
            true
        }
        Some(WholeBody::File(file)) => {
            spooled = Some(tokio::fs::File::from_std(file));
            false
        }
        None => false,
    };
    writer
        .write_all(&request)
        .await
        .map_err(|e| refuse(502, format!("sending the request to the FastCGI app: {e}")))?;

    // STDOUT content flows through a pipe to the shared CGI response code; STDERR goes
    // to the error log; END_REQUEST ends it.
    let (mut body, body_in) = tokio::io::duplex(64 * 1024);
    let mut reader_task = AbortOnDrop(tokio::spawn(read_records(
        reader,
        body_in,
        call.site.error_log.get().and_then(|f| f.try_clone().ok()),
        call.site.config.name.clone(),
        format!(
            "[{}] {}",
            call.site.config.name,
            crate::logging::escape(script.script_name.as_bytes(), 256)
        ),
    )));

    let feed = async {
        match spooled {
            _ if body_in_hand => Ok(()),
            Some(file) => feed_spooled(file, &mut writer).await,
            None => feed_stdin(call, stream, buf, &mut writer, content_length).await,
        }
    };
    let mut out = BytesMut::with_capacity(8 * 1024);
    let cgi_head = feed_then_head(feed, read_cgi_head(&mut body, &mut out)).await?;
    let cgi_head = as_error_page(call, cgi_head);
    let outcome = answer(
        call.head,
        crate::worker::response::site_headers(call.site, call.secure),
        cgi_head,
        out,
        &mut body,
        stream,
        &mut slot.head_sent,
    )
    .await?;
    // Whatever the app wrote past the response we sent is discarded, not waited on.
    drop(body);
    let ended = match (&mut reader_task.0).await {
        Ok(r) => r,
        Err(e) => Err(format!("record reader failed: {e}")),
    };
    match ended {
        Ok(end) => {
            if end.protocol_status != record::REQUEST_COMPLETE || end.app_status != 0 {
                log_error(
                    call.site,
                    &format!(
                        "{}: FastCGI request ended with app status {}, protocol status {}",
                        script.script_name, end.app_status, end.protocol_status
                    ),
                );
            }
            if let Some(lease) = slot.lease.take() {
                lease.release();
            }
        }
        // The lease stays in the slot and is dropped: the process is replaced.
        Err(reason) => log_error(call.site, &format!("{}: {reason}", script.script_name)),
    }
    Ok(outcome)
}

fn pool_of(call: &CgiCall<'_>) -> Result<Arc<Pool>, Failure> {
    call.site
        .config
        .routes
        .iter()
        .position(|r| std::ptr::eq(r, call.route))
        .and_then(|i| call.site.fastcgi.get(i).cloned().flatten())
        .ok_or_else(|| refuse(500, "no process pool for this fastcgi route").into())
}

/// A connection to a pooled process. A reused process may have died since its last
/// request (killed, crashed): then one fresh process is tried.
async fn connect_pooled(
    pool: &Arc<Pool>,
    call: &CgiCall<'_>,
) -> Result<(UnixStream, Lease), Failure> {
    let site = call.site;
    let start_failed = |e: io::Error| match call.tenant.caps.spawn_limit(&e) {
        Some(limit) => at_limit(format!("FastCGI app: cannot start a process: {limit}")),
        None => refuse(503, format!("FastCGI app: {e}")),
    };
    let mut lease = pool.acquire(site).await.map_err(start_failed)?;
    match UnixStream::connect(lease.process.socket()).await {
        Ok(conn) => return Ok((conn, lease)),
        Err(e) => log_error(
            site,
            &format!(
                "FastCGI process {:?} did not accept ({e}); starting another",
                lease.process.pid()
            ),
        ),
    }
    lease = pool.replace(lease, site).map_err(start_failed)?;
    let conn = UnixStream::connect(lease.process.socket())
        .await
        .map_err(|e| refuse(502, format!("connecting to a new FastCGI process: {e}")))?;
    Ok((conn, lease))
}

/// A socket the tenant runs: used only when the process that listens on it runs as
/// this tenant. Anything else could be another tenant's app (whose code would then
/// run with that tenant's rights on our request).
async fn connect_tenant_socket(path: &std::path::Path) -> Result<UnixStream, Failure> {
    let conn = UnixStream::connect(path)
        .await
        .map_err(|e| refuse(502, format!("connecting to {}: {e}", path.display())))?;
    let peer = rustix::net::sockopt::socket_peercred(&conn)
        .map_err(|e| refuse(502, format!("credentials of {}: {e}", path.display())))?;
    let uid = rustix::process::geteuid().as_raw();
    if peer.uid.as_raw() != uid {
        return Err(refuse(
            502,
            format!(
                "refusing FastCGI socket {}: its process runs as uid {}, not as this tenant (uid {uid})",
                path.display(),
                peer.uid.as_raw()
            ),
        )
        .into());
    }
    Ok(conn)
}

/// Send the body as STDIN records, then the empty record that ends it. A body with a
/// Content-Length is relayed from the client as it arrives.
async fn feed_stdin(
    call: &CgiCall<'_>,
    stream: &mut Stream,
    buf: &mut BytesMut,
    writer: &mut OwnedWriteHalf,
    content_length: Option<u64>,
) -> Result<(), Failure> {
    let mut out = Vec::new();
    if content_length.unwrap_or(0) > 0 {
        let (mut from_client, mut to_app) = tokio::io::duplex(64 * 1024);
        let idle = call.tenant.limits.body_timeout;
        let relay = async {
            let relayed = relay_body(stream, buf, Some(&mut to_app), &call.head.body, idle).await;
            drop(to_app);
            relayed
        };
        let forward = async {
            let mut chunk = vec![0u8; 32 * 1024];
            let mut records = Vec::with_capacity(chunk.len() + 64);
            let mut app_gone = false;
            loop {
                let n = from_client.read(&mut chunk).await?;
                if n == 0 {
                    return Ok::<bool, io::Error>(app_gone);
                }
                if app_gone {
                    // Keep draining so the client's body is consumed all the same.
                    continue;
                }
                records.clear();
                record::stream(&mut records, record::STDIN, REQUEST_ID, &chunk[..n]);
                if let Err(e) = writer.write_all(&records).await {
                    if !app_closed(&e) {
                        return Err(e);
                    }
                    // An app may answer without reading its input; that is its right.
                    app_gone = true;
                }
            }
        };
        let (relayed, forwarded) = tokio::join!(relay, forward);
        relayed.map_err(|e| body_failure(call, e))?;
        if forwarded? {
            return Ok(());
        }
    }
    record::stream(&mut out, record::STDIN, REQUEST_ID, &[]);
    match writer.write_all(&out).await {
        Err(e) if !app_closed(&e) => Err(e.into()),
        _ => Ok(()),
    }
}

/// A chunked body spooled to a file (see `cgi::read_body`), as STDIN records.
async fn feed_spooled(
    mut file: tokio::fs::File,
    writer: &mut OwnedWriteHalf,
) -> Result<(), Failure> {
    let mut chunk = vec![0u8; 32 * 1024];
    let mut records = Vec::with_capacity(chunk.len() + 64);
    loop {
        let n = file
            .read(&mut chunk)
            .await
            .map_err(|e| refuse(500, format!("reading a spooled body: {e}")))?;
        records.clear();
        record::stream(&mut records, record::STDIN, REQUEST_ID, &chunk[..n]);
        match writer.write_all(&records).await {
            // An app may answer without reading its input; that is its right.
            Err(e) if app_closed(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
            Ok(()) if n == 0 => return Ok(()),
            Ok(()) => {}
        }
    }
}

fn app_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// Decode the app's records until FCGI_END_REQUEST: STDOUT into `body`, STDERR lines
/// into the site's error log. `Err` says how the app broke the protocol.
async fn read_records(
    mut reader: OwnedReadHalf,
    mut body: tokio::io::DuplexStream,
    log: Option<std::fs::File>,
    site: String,
    label: String,
) -> Result<record::EndRequest, String> {
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut body_open = true;
    // FCGI_STDERR as lines in fixed memory, escaped, cut and rate-limited per site
    // like a CGI script's stderr.
    let mut stderr_lines = crate::logging::LineSplitter::new(crate::logging::MAX_LINE);
    let limit = crate::logging::rate_limit(&format!("site {site}"));
    let mut emit = |line: &[u8], cut: usize| {
        let text = crate::logging::bounded_line(line, cut);
        let admitted = limit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(text.len());
        if let Some(suppressed) = admitted {
            if suppressed > 0 {
                log_stderr(
                    log.as_ref(),
                    &label,
                    &crate::logging::suppressed_note(suppressed),
                );
            }
            log_stderr(log.as_ref(), &label, &text);
        }
    };
    loop {
        while let Some((rec, used)) = record::decode(&input).map_err(|e| e.to_string())? {
            let _ = input.split_to(used);
            if rec.request_id != REQUEST_ID {
                return Err(format!(
                    "FastCGI record for request {}, not {REQUEST_ID}",
                    rec.request_id
                ));
            }
            match rec.kind {
                record::STDOUT if body_open && !rec.content.is_empty() => {
                    // The response side stopped reading (it sent what it framed):
                    // the rest is drained, not delivered.
                    if body.write_all(&rec.content).await.is_err() {
                        body_open = false;
                    }
                }
                record::STDOUT => {}
                record::STDERR => {
                    stderr_lines.push(&rec.content, &mut emit);
                    if rec.content.is_empty() {
                        stderr_lines.finish(&mut emit);
                    }
                }
                record::END_REQUEST => {
                    stderr_lines.finish(&mut emit);
                    return rec
                        .end_request()
                        .ok_or_else(|| "malformed FCGI_END_REQUEST".to_string());
                }
                other => return Err(format!("unexpected FastCGI record type {other}")),
            }
        }
        input.reserve(16 * 1024);
        match reader.read_buf(&mut input).await {
            Ok(0) => {
                return Err("the FastCGI app closed the connection before FCGI_END_REQUEST".into());
            }
            Ok(_) => {}
            Err(e) => return Err(format!("reading from the FastCGI app: {e}")),
        }
    }
}

/// `line`: already escaped and bounded.
fn log_stderr(log: Option<&std::fs::File>, label: &str, line: &str) {
    let Some(mut log) = log else { return };
    let text = format!("{} {label}: {line}\n", crate::http::http_date());
    let _ = log.write_all(text.as_bytes());
}
