//! The master's end of the control socket (`run_dir/control.sock`, see
//! [`crate::control`]): root-only by mode and by SO_PEERCRED, one request per
//! connection, answered by the master's event loop.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::control::{MAX_REQUEST, Request, Response, SOCKET};

/// A request from the control socket and where its answer goes.
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// Bind the socket (replacing one a previous master left) with mode 0600.
pub fn bind(run_dir: &Path) -> anyhow::Result<UnixListener> {
    let path = run_dir.join(SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    // Bound under a umask that leaves no window in which others could connect.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(&path);
    rustix::process::umask(old);
    bound.with_context(|| format!("binding the control socket {}", path.display()))
}

/// Accept control connections until the master stops.
pub async fn serve(listener: UnixListener, calls: mpsc::UnboundedSender<Call>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, calls).await {
                debug!("control connection: {e:#}");
            }
        });
    }
}

async fn answer(stream: UnixStream, calls: mpsc::UnboundedSender<Call>) -> anyhow::Result<()> {
    // The mode keeps others out already; the peer's uid is checked before a byte of
    // the request is read, so root parses only what root wrote.
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    if uid != 0 {
        warn!(
            uid,
            "control socket: refused a connection from a non-root user"
        );
        return reply(
            &mut write,
            &Response::error("the control socket is root's only"),
        )
        .await;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .context("no request within 5 s")??;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            calls
                .send(Call { request, reply: tx })
                .map_err(|_| anyhow::anyhow!("the master is stopping"))?;
            rx.await
                .unwrap_or_else(|_| Response::error("the master is stopping"))
        }
        Err(e) => Response::error(format!("not a control request: {e}")),
    };
    reply(&mut write, &response).await
}

async fn reply(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec(response)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    Ok(())
}
