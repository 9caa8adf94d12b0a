//! Reading a file its tenant controls (the tenant's own config layer, its sites' own
//! certificates and keys) in the tenant's worker: the tenant can put a FIFO, a device,
//! a huge file or a file on a stalling filesystem at any of those paths. Whatever it
//! puts there costs at most one bounded read on a blocking-pool thread, never a thread
//! that serves, and ends in an error that names the file.
//!
//! The paths are the admin's and the reader is the tenant itself (fenced), so the
//! tenant's own symlinks are followed: they lead nowhere the tenant could not open
//! anyway. What is opened must be a regular file, checked on the opened fd.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{FileType, Mode, OFlags};

/// The largest user_config a worker reads.
pub const MAX_CONFIG: u64 = 1024 * 1024;
/// The largest certificate chain or key file a worker reads.
pub const MAX_PEM: u64 = 256 * 1024;
/// How long one read may take before the worker gives up on the file (the blocking
/// thread is abandoned; it goes with the worker process).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Read `path` whole, refusing anything but a regular file of at most `max` bytes.
/// Blocks on a slow filesystem: call it off the runtime threads ([`read`]). Errors keep
/// the kind of the cause (`NotFound` stays `NotFound`) and name the file.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let named = |kind: io::ErrorKind, what: String| {
        io::Error::new(kind, format!("{}: {what}", path.display()))
    };
    // NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for
    // one; NOCTTY: a terminal never becomes the worker's controlling terminal.
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        let e = io::Error::from(e);
        named(e.kind(), format!("cannot open: {e}"))
    })?;
    read_opened(fd, path, max)
}

/// The whole of an opened file (`path` only names it in errors): refused unless `fstat`
/// of the fd says regular file and it holds at most `max` bytes, checked before and
/// during the read (it may grow after fstat).
pub fn read_opened(fd: rustix::fd::OwnedFd, path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let named = |kind: io::ErrorKind, what: String| {
        io::Error::new(kind, format!("{}: {what}", path.display()))
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| named(io::ErrorKind::Other, e.to_string()))?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind != FileType::RegularFile {
        return Err(named(
            io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file: refused", describe(kind)),
        ));
    }
    let too_big = || {
        named(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes: refused"),
        )
    };
    if u64::try_from(stat.st_size).unwrap_or(u64::MAX) > max {
        return Err(too_big());
    }
    // The size may change after fstat: the read itself is bounded too.
    let mut out = Vec::new();
    std::fs::File::from(fd)
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| named(e.kind(), format!("cannot read: {e}")))?;
    if out.len() as u64 > max {
        return Err(too_big());
    }
    Ok(out)
}

/// [`read_bounded`] on the blocking pool, given up after [`READ_TIMEOUT`].
pub async fn read(path: PathBuf, max: u64) -> io::Result<Vec<u8>> {
    read_within(path, max, READ_TIMEOUT).await
}

async fn read_within(path: PathBuf, max: u64, limit: Duration) -> io::Result<Vec<u8>> {
    let shown = path.display().to_string();
    let job = tokio::task::spawn_blocking(move || read_bounded(&path, max));
    match tokio::time::timeout(limit, job).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(io::Error::other(format!("{shown}: reading failed: {e}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{shown}: not read within {limit:?}: given up"),
        )),
    }
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::Fifo => "a FIFO",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Directory => "a directory",
        FileType::Socket => "a socket",
        FileType::Symlink => "a symlink",
        _ => "not a plain file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_regular_file_within_the_bound_is_read() {
        let d = dir();
        let path = d.path().join("ok.toml");
        std::fs::write(&path, b"x = 1\n").unwrap();
        assert_eq!(read_bounded(&path, 16).unwrap(), b"x = 1\n");
        // A symlink to it is followed (the reader is the tenant itself).
        let link = d.path().join("link.toml");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(read_bounded(&link, 16).unwrap(), b"x = 1\n");
    }

    #[test]
    fn missing_keeps_its_kind_and_names_the_file() {
        let d = dir();
        let path = d.path().join("absent.toml");
        let e = read_bounded(&path, 16).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("absent.toml"), "{e}");
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let d = dir();
        let path = d.path().join("fifo.toml");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let started = std::time::Instant::now();
        let e = read_bounded(&path, 16).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("is a FIFO"), "{e}");
        assert!(e.to_string().contains("fifo.toml"), "{e}");
        // Through a symlink, too.
        let link = d.path().join("link.toml");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(
            read_bounded(&link, 16)
                .unwrap_err()
                .to_string()
                .contains("FIFO")
        );
    }

    #[test]
    fn devices_and_directories_are_refused() {
        for (path, what) in [("/dev/zero", "character device"), ("/", "directory")] {
            let e = read_bounded(Path::new(path), 16).unwrap_err();
            assert!(e.to_string().contains(what), "{path}: {e}");
        }
    }

    #[test]
    fn over_the_bound_is_refused() {
        let d = dir();
        let path = d.path().join("big.pem");
        std::fs::write(&path, vec![b'a'; 17]).unwrap();
        let e = read_bounded(&path, 16).unwrap_err();
        assert!(e.to_string().contains("larger than 16 bytes"), "{e}");
        std::fs::write(&path, vec![b'a'; 16]).unwrap();
        assert_eq!(read_bounded(&path, 16).unwrap().len(), 16);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_async_read_runs_off_the_runtime_thread() {
        let d = dir();
        let path = d.path().join("fifo.toml");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // On a current-thread runtime a blocking read would stall this very test.
        let e = read(path, MAX_CONFIG).await.unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let ok = d.path().join("ok");
        std::fs::write(&ok, b"fine").unwrap();
        assert_eq!(read(ok, MAX_CONFIG).await.unwrap(), b"fine");
    }
}
