//! Process-wide logging: `tracing` lines to stderr and, in the master, also to the
//! server's error log. Children write to stderr only; the master copies their lines.
//!
//! Text a tenant or a client controls (a config key, a script's stderr, a path, a
//! header) reaches a log only through [`escape`]: control characters and invalid
//! UTF-8 become `\xNN`, so it can never start a line of its own, and every line is
//! cut at [`MAX_LINE`]. Whatever is copied from a pipe goes through [`LineSplitter`]
//! (fixed memory, however long the line) and a [`RateLimit`] per source.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest text one log line carries; the rest is cut with a note of how much.
pub const MAX_LINE: usize = 4096;
/// A line written by [`Tee`] may carry a prefix and the cut note on top of that.
const MAX_EVENT: usize = MAX_LINE + 512;
/// Lines per second one source (a child process of the master, a site's scripts)
/// may log; a burst of one second's worth passes at once.
pub const LINES_PER_SEC: u32 = 100;
/// Bytes per second one source may log.
pub const BYTES_PER_SEC: u32 = 64 * 1024;

static ERROR_LOG: OnceLock<Arc<Mutex<File>>> = OnceLock::new();

/// Writes each log line to stderr and, once opened, to the error log.
#[derive(Clone, Copy)]
struct Tee;

impl Write for Tee {
    /// `tracing`'s formatter hands over each event as one buffer ending in a newline:
    /// everything before that newline is escaped, so no field or message (whoever
    /// wrote it) can start a line of its own, and cut at [`MAX_EVENT`].
    fn write(&mut self, event: &[u8]) -> std::io::Result<usize> {
        let mut line = escape(event.strip_suffix(b"\n").unwrap_or(event), MAX_EVENT);
        line.push('\n');
        let buf = line.as_bytes();
        let _ = std::io::stderr().write_all(buf);
        if let Some(file) = ERROR_LOG.get() {
            // A full disk must not stop the server: the line still reached stderr,
            // and so does a note that the file is missing lines (once a minute).
            let written = file
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(buf);
            if let Err(e) = written {
                report_error_log_failure(&e);
            }
        }
        // All of it was taken (a failed write is reported, not retried).
        Ok(event.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn report_error_log_failure(e: &std::io::Error) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static REPORTED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = REPORTED.load(Ordering::Relaxed);
    if now >= last + 60
        && REPORTED
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let _ = writeln!(
            std::io::stderr(),
            "condo: writing the error log failed: {e}; its lines go to stderr only (reported once a minute)"
        );
    }
}

/// Set up `tracing` for any role. The master passes its error log; children log to
/// stderr, which the master collects.
pub fn init_tracing(error_log: Option<File>) {
    if let Some(file) = error_log {
        let _ = ERROR_LOG.set(Arc::new(Mutex::new(file)));
    }
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(|| Tee)
        .try_init();
}

/// Switch the error log to a newly opened file (SIGUSR1, after logrotate).
pub fn reopen_error_log(file: File) {
    match ERROR_LOG.get() {
        Some(current) => *current.lock().unwrap_or_else(|e| e.into_inner()) = file,
        None => {
            let _ = ERROR_LOG.set(Arc::new(Mutex::new(file)));
        }
    }
}

/// A line a child wrote to its stderr, already escaped and bounded, copied to the
/// master's log.
pub fn child_line(line: &str) {
    let mut out = String::with_capacity(line.len() + 1);
    out.push_str(line);
    out.push('\n');
    let _ = Tee.write_all(out.as_bytes());
}

/// `bytes` as log text: printable characters (quotes, backslashes and non-ASCII text
/// included, so tracebacks stay readable) as they are; control characters (C0, DEL,
/// C1), the Unicode line separators and bidirectional overrides, and bytes that are
/// not UTF-8 as `\xNN` / `\u{NNNN}`. At most about `max` bytes; the rest is cut and
/// the cut is said.
pub fn escape(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max) + 16);
    let mut used = 0;
    'chunks: for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if out.len() >= max {
                break 'chunks;
            }
            used += c.len_utf8();
            let code = c as u32;
            if code < 0x20 || (0x7f..=0x9f).contains(&code) {
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            } else if matches!(code, 0x2028 | 0x2029 | 0x202a..=0x202e | 0x2066..=0x2069) {
                let _ = write!(out, "\\u{{{code:04x}}}");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            if out.len() >= max {
                break 'chunks;
            }
            used += 1;
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    if used < bytes.len() {
        let _ = write!(out, " [... {} bytes cut]", bytes.len() - used);
    }
    out
}

/// A line that was cut while it was read (see [`LineSplitter`]), as log text.
pub fn bounded_line(line: &[u8], cut: usize) -> String {
    let mut text = escape(line, MAX_LINE);
    if cut > 0 {
        let _ = write!(text, " [... {cut} more bytes cut]");
    }
    text
}

/// Splits a byte stream into lines with fixed memory: of a line longer than `max` the
/// first `max` bytes are kept and the rest only counted.
pub struct LineSplitter {
    line: Vec<u8>,
    cut: usize,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        Self {
            line: Vec::new(),
            cut: 0,
            max,
        }
    }

    /// Feed bytes; `emit(line, bytes_cut)` for each line they complete.
    pub fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&[u8], usize)) {
        while !bytes.is_empty() {
            let (part, done) = match bytes.iter().position(|&b| b == b'\n') {
                Some(at) => (&bytes[..at], Some(at + 1)),
                None => (bytes, None),
            };
            let room = self.max.saturating_sub(self.line.len());
            let keep = part.len().min(room);
            self.line.extend_from_slice(&part[..keep]);
            self.cut += part.len() - keep;
            match done {
                Some(used) => {
                    emit(&self.line, self.cut);
                    self.line.clear();
                    self.cut = 0;
                    bytes = &bytes[used..];
                }
                None => bytes = &[],
            }
        }
    }

    /// The last line, if the stream did not end with a newline.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8], usize)) {
        if !self.line.is_empty() || self.cut > 0 {
            emit(&self.line, self.cut);
        }
        self.line.clear();
        self.cut = 0;
    }
}

/// A token bucket for log lines: `lines_per_sec` lines and `bytes_per_sec` bytes a
/// second, bursts up to one second's worth. What is refused is counted, and said once
/// lines pass again.
pub struct RateLimit {
    lines_per_sec: f64,
    bytes_per_sec: f64,
    lines: f64,
    bytes: f64,
    last: Instant,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(lines_per_sec: u32, bytes_per_sec: u32) -> Self {
        Self {
            lines_per_sec: f64::from(lines_per_sec),
            bytes_per_sec: f64::from(bytes_per_sec),
            lines: f64::from(lines_per_sec),
            bytes: f64::from(bytes_per_sec),
            last: Instant::now(),
            suppressed: 0,
        }
    }

    /// May a line of `len` bytes be written now? `Some(n)`: yes, after a note that `n`
    /// lines (possibly 0) were suppressed before it.
    pub fn admit(&mut self, len: usize) -> Option<u64> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.lines = (self.lines + elapsed * self.lines_per_sec).min(self.lines_per_sec);
        self.bytes = (self.bytes + elapsed * self.bytes_per_sec).min(self.bytes_per_sec);
        let len = len as f64;
        if self.lines >= 1.0 && self.bytes >= len.min(self.bytes_per_sec) {
            self.lines -= 1.0;
            self.bytes -= len;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Lines refused since the last note (to say at the end of a stream).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// The note that replaces refused lines.
pub fn suppressed_note(n: u64) -> String {
    format!(
        "condo: {n} line(s) suppressed here (over {LINES_PER_SEC} lines or {} KiB a second)",
        BYTES_PER_SEC / 1024
    )
}

/// One bucket per source (a tenant's worker, the dispatcher, a site), kept across
/// restarts of the process behind it, so restarting does not refill it.
pub fn rate_limit(source: &str) -> Arc<Mutex<RateLimit>> {
    static LIMITS: OnceLock<Mutex<HashMap<String, Arc<Mutex<RateLimit>>>>> = OnceLock::new();
    LIMITS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(source.to_string())
        .or_insert_with(|| Arc::new(Mutex::new(RateLimit::new(LINES_PER_SEC, BYTES_PER_SEC))))
        .clone()
}

/// Copy lines from `reader` (a pipe) to `write`, escaped, each at most [`MAX_LINE`],
/// at most [`LINES_PER_SEC`] lines / [`BYTES_PER_SEC`] bytes a second for `source`,
/// reading in fixed chunks: however much arrives, memory stays fixed. Returns at EOF
/// or a read error.
pub async fn copy_lines<R: AsyncRead + Unpin>(
    mut reader: R,
    source: &str,
    mut write: impl FnMut(&str),
) {
    let limit = rate_limit(source);
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut buf = vec![0u8; 8192];
    let mut emit = |line: &[u8], cut: usize| {
        let text = bounded_line(line, cut);
        let admitted = limit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(text.len());
        if let Some(suppressed) = admitted {
            if suppressed > 0 {
                write(&suppressed_note(suppressed));
            }
            write(&text);
        }
    };
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => splitter.push(&buf[..n], &mut emit),
        }
    }
    splitter.finish(&mut emit);
    let suppressed = limit
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take_suppressed();
    if suppressed > 0 {
        write(&suppressed_note(suppressed));
    }
}

/// The master's copy of a child's stderr into its own log, each line tagged with the
/// child (`[worker alice]`), so a child's line can never pass for the master's.
pub async fn copy_child_stderr<R: AsyncRead + Unpin>(reader: R, child: String) {
    let prefix = format!("[{child}] ");
    copy_lines(reader, &child, |line| {
        child_line(&format!("{prefix}{line}"))
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bad_utf8_are_escaped_text_is_not() {
        let text = "key\n2026-01-01T00:00:00Z ERROR forged\r\x1b[31m\u{7f}\u{85}\u{202e} \"quoted\" \\ naïve 日本";
        let mut bytes = text.as_bytes().to_vec();
        bytes.extend_from_slice(b"\xff\xfe!");
        let out = escape(&bytes, MAX_LINE);
        assert_eq!(
            out,
            "key\\x0a2026-01-01T00:00:00Z ERROR forged\\x0d\\x1b[31m\\x7f\\xc2\\x85\\u{202e} \"quoted\" \\ naïve 日本\\xff\\xfe!"
        );
        assert!(!out.contains('\n'));
        // Escaping what was escaped changes nothing.
        assert_eq!(escape(out.as_bytes(), MAX_LINE), out);
    }

    #[test]
    fn long_text_is_cut_and_the_cut_said() {
        let out = escape(&vec![b'k'; 10 << 20], 100);
        assert!(out.len() < 140, "{}", out.len());
        assert!(
            out.ends_with(&format!(" [... {} bytes cut]", (10 << 20) - 100)),
            "{out}"
        );
        let escaped = escape(&[b'\n'; 1000], 100);
        assert!(escaped.len() < 140, "{escaped}");
    }

    #[test]
    fn the_splitter_keeps_fixed_memory_for_an_endless_line() {
        let mut s = LineSplitter::new(8);
        let mut lines = Vec::new();
        for _ in 0..1000 {
            s.push(&[b'x'; 1000], |l, cut| lines.push((l.to_vec(), cut)));
        }
        assert!(s.line.capacity() < 64);
        s.push(b"\nab\ncd", |l, cut| lines.push((l.to_vec(), cut)));
        s.finish(|l, cut| lines.push((l.to_vec(), cut)));
        assert_eq!(
            lines,
            [
                (b"xxxxxxxx".to_vec(), 1_000_000 - 8),
                (b"ab".to_vec(), 0),
                (b"cd".to_vec(), 0)
            ]
        );
    }

    #[test]
    fn the_bucket_refuses_a_flood_and_counts_it() {
        let mut limit = RateLimit::new(10, 1000);
        let passed = (0..100).filter(|_| limit.admit(10).is_some()).count();
        assert!((10..=11).contains(&passed), "{passed}");
        assert!(limit.take_suppressed() >= 89);
        // Bytes count too: one second's worth of bytes, then nothing.
        let mut limit = RateLimit::new(1000, 1000);
        assert!(limit.admit(600).is_some());
        assert!(limit.admit(600).is_none());
    }
}
