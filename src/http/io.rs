//! Reading request heads and framed bodies from a stream, with limits and timeouts.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use super::chunked::{ChunkedDecoder, ChunkedError, Step};
use super::head::{BodyFraming, HeadError, Limits, RequestHead, parse_request};
use crate::config::ClientLimits;

pub enum HeadRead {
    Head(RequestHead),
    /// The client closed the connection (or timed out idle) before sending a byte of
    /// a new request: nothing to answer.
    Closed,
    /// The head is invalid or over a limit: answer with the error's status and close.
    Invalid(HeadError),
    /// The client started a head and did not finish it in time: answer 408 and close.
    TimedOut,
    Io(io::Error),
}

pub fn head_limits(limits: &ClientLimits) -> Limits {
    Limits {
        max_request_line: limits.max_request_line,
        max_head_bytes: limits.max_head_bytes,
        max_headers: limits.max_headers,
    }
}

/// Read until `buf` starts with a complete request head (bytes after it stay in `buf`).
/// `idle` bounds the wait for the first byte (the keep-alive timeout between requests),
/// `limits.header_timeout` the time from the first byte to the end of the head.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    limits: &ClientLimits,
    idle: Duration,
) -> HeadRead {
    let parse_limits = head_limits(limits);
    let mut deadline = if buf.is_empty() {
        Instant::now() + idle
    } else {
        Instant::now() + limits.header_timeout
    };
    loop {
        if !buf.is_empty() {
            match parse_request(buf, &parse_limits) {
                Ok(Some(head)) => return HeadRead::Head(head),
                Ok(None) => {}
                Err(e) => return HeadRead::Invalid(e),
            }
        }
        let was_empty = buf.is_empty();
        buf.reserve(4096);
        match timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_) if was_empty => return HeadRead::Closed,
            Err(_) => return HeadRead::TimedOut,
            Ok(Ok(0)) => return HeadRead::Closed,
            Ok(Ok(_)) => {
                if was_empty {
                    deadline = Instant::now() + limits.header_timeout;
                }
            }
            Ok(Err(e)) => return HeadRead::Io(e),
        }
    }
}

/// Move one message body from `src` (whose already-read bytes are in `src_buf`) to
/// `dst`, verbatim, stopping exactly at its end so later bytes stay in `src_buf`.
/// `dst = None` reads and discards. Returns how many bytes the body took on the wire.
pub async fn relay_body<R, W>(
    src: &mut R,
    src_buf: &mut BytesMut,
    dst: Option<&mut W>,
    framing: &BodyFraming,
    idle: Duration,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    relay_body_max(src, src_buf, dst, framing, idle, u64::MAX).await
}

/// [`relay_body`] for a chunked body of at most `max` payload bytes: past it, an error
/// that [`client_fault`] answers with 413, raised at the chunk size that crosses it
/// (before the chunk's data is read). A Content-Length body is the caller's to check
/// against `max` before it starts.
pub async fn relay_body_max<R, W>(
    src: &mut R,
    src_buf: &mut BytesMut,
    mut dst: Option<&mut W>,
    framing: &BodyFraming,
    idle: Duration,
    max: u64,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(len) => {
            let mut left = *len;
            while left > 0 {
                if src_buf.is_empty() {
                    fill(src, src_buf, idle, left).await?;
                }
                let n = (src_buf.len() as u64).min(left) as usize;
                if let Some(d) = dst.as_mut() {
                    d.write_all(&src_buf[..n]).await.map_err(sink_failed)?;
                }
                src_buf.advance(n);
                left -= n as u64;
                total += n as u64;
            }
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::with_limit(max);
            loop {
                if src_buf.is_empty() {
                    fill(src, src_buf, idle, CHUNKED_READ).await?;
                }
                let (consumed, step) = decoder.decode(src_buf).map_err(chunked_error)?;
                let (take, done) = match step {
                    Step::Done { consumed } => (consumed, true),
                    _ => (consumed, false),
                };
                if let Some(d) = dst.as_mut() {
                    d.write_all(&src_buf[..take]).await.map_err(sink_failed)?;
                }
                src_buf.advance(take);
                total += take as u64;
                if done {
                    break;
                }
                if matches!(step, Step::NeedMore) || take == 0 {
                    fill(src, src_buf, idle, CHUNKED_READ).await?;
                }
            }
        }
    }
    if let Some(d) = dst {
        d.flush().await.map_err(sink_failed)?;
    }
    Ok(total)
}

/// The destination of a relayed body failed, not its source: kept inside the
/// `io::Error` (whose kind stays the destination's) so a caller can tell a client's
/// fault from the far side's.
#[derive(Debug)]
struct SinkFailed(io::Error);

impl std::fmt::Display for SinkFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing the body on: {}", self.0)
    }
}

impl std::error::Error for SinkFailed {}

fn sink_failed(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), SinkFailed(e))
}

fn chunked_error(e: ChunkedError) -> io::Error {
    let kind = match e {
        ChunkedError::TooLarge => io::ErrorKind::FileTooLarge,
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, format!("bad chunked body: {e}"))
}

/// The status that answers a body relay's failure when the client caused it: 408 for
/// a body that stopped arriving (`body_timeout`), 400 for a malformed one or a client
/// that closed in the middle, 413 for one over the limit. `None`: the failure is the
/// destination's (a script, an app, a worker that stopped reading) or the socket's.
pub fn client_fault(e: &io::Error) -> Option<u16> {
    if e.get_ref().is_some_and(|inner| inner.is::<SinkFailed>()) {
        return None;
    }
    match e.kind() {
        io::ErrorKind::TimedOut => Some(408),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => Some(400),
        io::ErrorKind::FileTooLarge => Some(413),
        _ => None,
    }
}

/// Read a whole chunked body and return its payload (for consumers that need the
/// length up front, like CGI's CONTENT_LENGTH). More than `limit` bytes is an error.
pub async fn read_chunked_payload<R: AsyncRead + Unpin>(
    src: &mut R,
    src_buf: &mut BytesMut,
    limit: usize,
    idle: Duration,
) -> io::Result<Vec<u8>> {
    let mut reader = ChunkedPayload::new(limit as u64);
    let mut payload = Vec::new();
    while let Some(data) = reader.next(src, src_buf, idle).await? {
        payload.extend_from_slice(&data);
    }
    Ok(payload)
}

/// The payload of a chunked body, piece by piece, for a consumer that keeps it
/// somewhere of its own (memory, then a spool file). More than `limit` payload bytes
/// is an error that [`client_fault`] answers with 413, raised at the chunk size that
/// crosses it, before that chunk's data is read.
pub struct ChunkedPayload {
    decoder: ChunkedDecoder,
    done: bool,
}

impl ChunkedPayload {
    pub fn new(limit: u64) -> Self {
        Self {
            decoder: ChunkedDecoder::with_limit(limit),
            done: false,
        }
    }

    /// The next piece of the payload; `None` once the body (trailers included) ended,
    /// with the bytes after it left in `src_buf`.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        src: &mut R,
        src_buf: &mut BytesMut,
        idle: Duration,
    ) -> io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        loop {
            if src_buf.is_empty() {
                fill(src, src_buf, idle, CHUNKED_READ).await?;
            }
            let (consumed, step) = self.decoder.decode(src_buf).map_err(chunked_error)?;
            match step {
                Step::Data { start, end } => {
                    let data = src_buf[start..end].to_vec();
                    src_buf.advance(consumed);
                    return Ok(Some(data));
                }
                Step::Done { .. } => {
                    src_buf.advance(consumed);
                    self.done = true;
                    return Ok(None);
                }
                Step::NeedMore => {
                    src_buf.advance(consumed);
                    fill(src, src_buf, idle, CHUNKED_READ).await?;
                }
            }
        }
    }
}

/// Bytes read at a time from a chunked body (its length is unknown).
const CHUNKED_READ: u64 = 64 * 1024;

/// Read more of a body of which `want` bytes are still to come: up to 256 KiB at once, so
/// a large body (a 100 KiB file through the proxy relay) takes a few reads, not dozens.
async fn fill<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut BytesMut,
    idle: Duration,
    want: u64,
) -> io::Result<()> {
    buf.reserve(want.clamp(16 * 1024, 256 * 1024) as usize);
    match tokio::time::timeout(idle, src.read_buf(buf)).await {
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "body read timed out",
        )),
        Ok(Ok(0)) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed in the middle of a body",
        )),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
    }
}

/// Send a final response and close without losing it (see [`close_gracefully`]).
pub async fn respond_and_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, response: &[u8]) {
    if stream.write_all(response).await.is_ok() {
        close_gracefully(stream).await;
    }
}

/// Shut down our side, then read and discard for a moment, so the kernel does not
/// answer the client's unread bytes with a reset that destroys the response in flight.
pub async fn close_gracefully<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = stream.shutdown().await;
    // On the heap: an array here would be part of every connection task's future.
    let mut sink = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut drained = 0usize;
    while drained < 256 * 1024 {
        match timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

/// The send timeout of a client connection: a write that makes no progress for `after`
/// fails with `TimedOut` (nginx's `send_timeout`), so a client that stops reading does
/// not hold a connection, a task and its buffers forever.
pub struct Stall {
    after: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Stall {
    pub fn new(after: Duration) -> Self {
        Self { after, timer: None }
    }

    pub fn after(&self) -> Duration {
        self.after
    }

    /// Pass on a write's result; while it is pending, fail it once `after` has passed
    /// since the last write that made progress.
    pub fn check(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<usize>>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::future::Future;
        use std::task::Poll;
        if polled.is_ready() {
            self.timer = None;
            return polled;
        }
        let after = self.after;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.timer = None;
                Poll::Ready(Err(send_timed_out(after)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

pub fn send_timed_out(after: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the client took no data for {after:?} (send_timeout)"),
    )
}

/// A stream whose writes fail after [`Stall`]'s timeout without progress.
pub struct SendTimeout<S> {
    pub inner: S,
    stall: Stall,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, after: Duration) -> Self {
        Self {
            inner,
            stall: Stall::new(after),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        this.stall.check(cx, polled)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
