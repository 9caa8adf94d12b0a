//! The bearer token of the admin listener's `/metrics`. Tenants' code runs on the same
//! host and reaches 127.0.0.1 like anyone else, and `/metrics` names every tenant, site
//! and their traffic: only a client with this token gets it (Prometheus sends it with
//! `authorization: { credentials_file: ... }`). `/health` says nothing of tenants and
//! stays open.

use std::io::{Read as _, Write as _};
use std::path::Path;

use anyhow::{Context, bail};
use rustix::fs::{Mode, OFlags};
use tracing::info;

use crate::config::Config;

/// The token when the admin listener is on: read from `server.admin_token_file`, or
/// made (32 random bytes, hex) and saved there 0600 when the file does not exist.
pub fn load(config: &Config) -> anyhow::Result<Option<String>> {
    if config.server.admin_listen.is_none() {
        return Ok(None);
    }
    let path = &config.server.admin_token_file;
    match read(path)? {
        Some(token) => Ok(Some(token)),
        None => create(path).map(Some),
    }
}

/// The token in `path`, checked: a regular file (no link followed) of ours that no one
/// else can write and that is not world-readable (a group, e.g. Prometheus's, may read
/// it). `None`: no such file.
fn read(path: &Path) -> anyhow::Result<Option<String>> {
    let fd = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => bail!("admin_token_file {}: {e}", path.display()),
    };
    let st =
        rustix::fs::fstat(&fd).with_context(|| format!("admin_token_file {}", path.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        bail!("admin_token_file {}: not a regular file", path.display());
    }
    if st.st_uid != me || st.st_mode & 0o026 != 0 {
        bail!(
            "admin_token_file {}: owned by uid {} with mode {:o}; it must be owned by uid {me}, \
             writable by no one else and not world-readable (e.g. 0600, or 0640 with \
             Prometheus's group)",
            path.display(),
            st.st_uid,
            st.st_mode & 0o7777
        );
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(4096)
        .read_to_string(&mut text)
        .with_context(|| format!("reading admin_token_file {}", path.display()))?;
    let token = text.trim();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "admin_token_file {}: the token must be at least 16 printable characters, without spaces",
            path.display()
        );
    }
    Ok(Some(token.to_string()))
}

fn create(path: &Path) -> anyhow::Result<String> {
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .context("reading /dev/urandom for the admin token")?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .with_context(|| format!("creating admin_token_file {}", path.display()))?;
    std::fs::File::from(fd)
        .write_all(format!("{token}\n").as_bytes())
        .with_context(|| format!("writing admin_token_file {}", path.display()))?;
    info!(
        "admin listener: /metrics asks for the bearer token generated in {}",
        path.display()
    );
    Ok(token)
}
