//! Process-wide logging: `tracing` lines to stderr and, in the master, also to the
//! server's error log. Children write to stderr only; the master copies their lines.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

static ERROR_LOG: OnceLock<Arc<Mutex<File>>> = OnceLock::new();

/// Writes each log line to stderr and, once opened, to the error log.
#[derive(Clone, Copy)]
struct Tee;

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
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
        Ok(buf.len())
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

/// A line a child wrote to its stderr, copied to the master's log as it is.
pub fn child_line(line: &str) {
    let mut out = String::with_capacity(line.len() + 1);
    out.push_str(line);
    out.push('\n');
    let _ = Tee.write_all(out.as_bytes());
}
