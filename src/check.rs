//! What `condo check` learns about a tenant's own files by doing what the tenant's
//! worker will do with them, as the tenant: open its sites' certificates and keys,
//! parse them, match the key to the certificate and the certificate to the site's
//! names; read its own config layer.
//!
//! Run as root, `check` never opens these paths itself (they are the tenant's to
//! change: a link to /etc/shadow, a FIFO): it starts this same binary as the tenant
//! (`condo check-as-tenant`, through the sandbox's uid switch), hands it the paths on
//! stdin and reads what it found on stdout, bounded in time and size. Unprivileged,
//! the worker runs as the invoking user too, so the reads happen in-process.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

use crate::config::{Credentials, Diagnostic, Site, Source};

/// How long the tenant's side of a check may take (a file on a stalled filesystem).
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// The most the tenant's side may answer.
const MAX_REPORT: u64 = 4 << 20;

/// What to look at, as the tenant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Request {
    pub sites: Vec<SiteFiles>,
    /// A tenant config file to read (returned as text; parsed by the caller).
    pub user_config: Option<PathBuf>,
}

/// One site's own certificate and key, and the names it must cover.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteFiles {
    pub site: String,
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl SiteFiles {
    pub fn of(site: &Site) -> Option<Self> {
        let tls = site.tls.as_ref()?;
        Some(Self {
            site: site.name.clone(),
            names: std::iter::once(site.name.clone())
                .chain(site.aliases.iter().cloned())
                .collect(),
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        })
    }
}

/// One problem with a site's files; `key` is `cert` or `key` (of the site's `tls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub site: String,
    pub key: String,
    pub message: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// The user config's text, or why it could not be read.
    pub user_config: Option<Result<String, String>>,
}

/// Do the checks in this process, with its own credentials.
pub fn run_here(request: &Request) -> Report {
    Report {
        findings: request.sites.iter().flat_map(check_site).collect(),
        user_config: request.user_config.as_ref().map(|path| {
            crate::tenant_file::read_bounded(path, crate::tenant_file::MAX_CONFIG)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    String::from_utf8(bytes)
                        .map_err(|_| format!("{}: not UTF-8 text", path.display()))
                })
        }),
    }
}

/// What the worker's `site_tls` would fail on, and what it would not notice but a
/// client would: a certificate that does not name the site.
fn check_site(s: &SiteFiles) -> Vec<Finding> {
    let finding = |key: &str, message: String| Finding {
        site: s.site.clone(),
        key: key.into(),
        message,
    };
    let read = |p: &PathBuf| {
        crate::tenant_file::read_bounded(p, crate::tenant_file::MAX_PEM)
            .map_err(|e| format!("the tenant cannot read it: {e}"))
    };
    let (cert_pem, key_pem) = match (read(&s.cert), read(&s.key)) {
        (Ok(c), Ok(k)) => (c, k),
        (c, k) => {
            let mut out = Vec::new();
            if let Err(e) = c {
                out.push(finding("cert", e));
            }
            if let Err(e) = k {
                out.push(finding("key", e));
            }
            return out;
        }
    };
    let chain: Vec<CertificateDer<'static>> =
        match CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<Vec<_>, _>>() {
            Ok(chain) if !chain.is_empty() => chain,
            Ok(_) => {
                return vec![finding(
                    "cert",
                    format!("{}: no certificate (PEM) in it", s.cert.display()),
                )];
            }
            Err(e) => {
                return vec![finding(
                    "cert",
                    format!("{}: not a PEM certificate chain: {e}", s.cert.display()),
                )];
            }
        };
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(e) => {
            return vec![finding(
                "key",
                format!("{}: no private key (PEM) in it: {e}", s.key.display()),
            )];
        }
    };
    let provider = rustls::crypto::ring::default_provider();
    if let Err(e) = rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider) {
        return vec![finding(
            "key",
            format!(
                "{} does not go with the certificate {} ({e})",
                s.key.display(),
                s.cert.display()
            ),
        )];
    }
    let leaf = match webpki::EndEntityCert::try_from(&chain[0]) {
        Ok(leaf) => leaf,
        Err(e) => {
            return vec![finding(
                "cert",
                format!(
                    "{}: the first certificate does not parse: {e}",
                    s.cert.display()
                ),
            )];
        }
    };
    let uncovered: Vec<&str> = s
        .names
        .iter()
        .filter(|name| {
            ServerName::try_from(name.as_str())
                .map(|n| leaf.verify_is_valid_for_subject_name(&n).is_err())
                .unwrap_or(true)
        })
        .map(String::as_str)
        .collect();
    if uncovered.is_empty() {
        Vec::new()
    } else {
        vec![finding(
            "cert",
            format!(
                "{} does not cover {} (the site's name and aliases): clients would see a name mismatch",
                s.cert.display(),
                uncovered.join(", ")
            ),
        )]
    }
}

/// Do the checks as `credentials`, in a child process of this binary that switches to
/// them; at most [`TIMEOUT`], then the child is killed.
pub fn run_as(credentials: &Credentials, request: &Request) -> anyhow::Result<Report> {
    runtime()?.block_on(run_as_async(credentials, request))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")
}

/// [`run_as`] on a runtime.
pub async fn run_as_async(credentials: &Credentials, request: &Request) -> anyhow::Result<Report> {
    {
        let exe = std::env::current_exe().unwrap_or_else(|_| "condo".into());
        let plan = crate::sandbox::SandboxPlan::new(Some(credentials.clone()), Vec::new());
        let mut cmd = crate::sandbox::command(&exe, &["check-as-tenant".as_ref()], plan)
            .context("preparing the check as the tenant")?;
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting the check as user {}", credentials.user))?;
        let input = serde_json::to_vec(request)?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let work = async {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            stdin.write_all(&input).await?;
            drop(stdin);
            let mut out = Vec::new();
            let mut err = Vec::new();
            let mut stdout = stdout.take(MAX_REPORT);
            let mut stderr = stderr.take(64 * 1024);
            let (a, b) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            a?;
            b?;
            let status = child.wait().await?;
            anyhow::Ok((status, out, err))
        };
        let (status, out, err) = tokio::time::timeout(TIMEOUT, work).await.map_err(|_| {
            anyhow::anyhow!(
                "the check as user {} took longer than {}s (a file on a stalled filesystem?)",
                credentials.user,
                TIMEOUT.as_secs()
            )
        })??;
        if !status.success() {
            anyhow::bail!(
                "the check as user {} failed ({status}): {}",
                credentials.user,
                String::from_utf8_lossy(&err).trim()
            );
        }
        serde_json::from_slice(&out).context("reading the check's answer")
    }
}

/// `condo check-as-tenant`: the child's side of [`run_as`].
pub fn serve_stdin() -> anyhow::Result<()> {
    use std::io::Read as _;
    let mut input = Vec::new();
    std::io::stdin()
        .take(16 << 20)
        .read_to_end(&mut input)
        .context("reading the request")?;
    let request: Request = serde_json::from_slice(&input).context("reading the request")?;
    let report = run_here(&request);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &report)?;
    out.flush()?;
    Ok(())
}

/// How many tenants' checks run at once: a tenant whose files stall costs the check
/// [`TIMEOUT`] on one of these, not the sum over every such tenant.
const PARALLEL: usize = 8;

/// Each job's check as its tenant, [`PARALLEL`] at a time; the reports in job order.
fn run_all(jobs: &[(String, Request, Option<Credentials>)]) -> Vec<anyhow::Result<Report>> {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => return jobs.iter().map(|_| Err(anyhow::anyhow!("{e:#}"))).collect(),
    };
    runtime.block_on(async {
        let mut results: Vec<Option<anyhow::Result<Report>>> = jobs.iter().map(|_| None).collect();
        let mut running = tokio::task::JoinSet::new();
        let mut next = 0;
        loop {
            while running.len() < PARALLEL && next < jobs.len() {
                let (_, request, credentials) = &jobs[next];
                let (request, credentials) = (request.clone(), credentials.clone());
                let index = next;
                running.spawn(async move {
                    let report = match &credentials {
                        Some(c) => run_as_async(c, &request).await,
                        None => Ok(run_here(&request)),
                    };
                    (index, report)
                });
                next += 1;
            }
            match running.join_next().await {
                Some(Ok((index, report))) => results[index] = Some(report),
                Some(Err(e)) => tracing::warn!("a tenant's check task failed: {e}"),
                None => break,
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("the check did not finish"))))
            .collect()
    })
}

/// For `condo check`: what each tenant's worker would find of its sites' own
/// certificates and keys, as errors at the site's `tls.cert` or `tls.key`. `origins`:
/// where each site is written ([`crate::config::Loaded::site_origins`]).
pub fn site_tls_diagnostics(
    config: &crate::config::Config,
    origins: &HashMap<String, (PathBuf, String)>,
) -> Vec<Diagnostic> {
    let root = rustix::process::geteuid().is_root();
    let accounts = crate::config::Directory::load();
    let mut sources: HashMap<PathBuf, Option<Source>> = HashMap::new();
    let mut at = |site: &str, key: &str, message: String| {
        let Some((file, site_key)) = origins.get(site) else {
            return Diagnostic {
                file: config.file.clone(),
                line: 0,
                column: 0,
                key: key.into(),
                message: format!("site {site}: {message}"),
            };
        };
        let source = sources
            .entry(file.clone())
            .or_insert_with(|| Source::read(file).ok());
        let full = format!("{site_key}.{key}");
        match source {
            Some(source) => source.error(&full, message),
            None => Diagnostic {
                file: file.clone(),
                line: 0,
                column: 0,
                key: full,
                message,
            },
        }
    };
    let by_tenant: std::collections::BTreeMap<_, _> =
        config.sites_by_tenant().into_iter().collect();
    let mut jobs: Vec<(String, Request, Option<Credentials>)> = Vec::new();
    for (tenant, sites) in by_tenant {
        let request = Request {
            sites: sites.iter().filter_map(|s| SiteFiles::of(s)).collect(),
            user_config: None,
        };
        if request.sites.is_empty() {
            continue;
        }
        let credentials = if root {
            let Some(t) = config.tenants.get(tenant) else {
                continue;
            };
            match accounts.resolve_tenant(t, config.server.uid_range) {
                Ok(credentials) => Some(credentials),
                Err(_) => continue, // reported by the config check itself
            }
        } else {
            None
        };
        jobs.push((tenant.to_string(), request, credentials));
    }
    let reports: Vec<anyhow::Result<Report>> = if root {
        run_all(&jobs)
    } else {
        jobs.iter().map(|(_, r, _)| Ok(run_here(r))).collect()
    };
    let mut diags = Vec::new();
    for ((tenant, request, _), report) in jobs.iter().zip(reports) {
        match report {
            Ok(report) => {
                for f in report.findings {
                    let message = format!(
                        "tenant {tenant}'s worker cannot serve HTTPS for {} with it: {}",
                        f.site, f.message
                    );
                    diags.push(at(&f.site, &format!("tls.{}", f.key), message));
                }
            }
            Err(e) => {
                for s in &request.sites {
                    diags.push(at(&s.site, "tls", format!("{e:#}")));
                }
            }
        }
    }
    diags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path, names: &[&str], cert_for: &[&str]) -> SiteFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            cert_for.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        SiteFiles {
            site: names[0].into(),
            names: names.iter().map(|s| s.to_string()).collect(),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    #[test]
    fn a_good_pair_passes_and_every_fault_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let ok = files(
            dir.path(),
            &["a.test", "www.a.test"],
            &["a.test", "www.a.test"],
        );
        assert_eq!(check_site(&ok), vec![]);

        // Not covering an alias.
        let mut alias = ok.clone();
        alias.names.push("shop.a.test".into());
        let f = check_site(&alias);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].key, "cert");
        assert!(f[0].message.contains("does not cover shop.a.test"), "{f:?}");

        // Missing files.
        let mut missing = ok.clone();
        missing.cert = dir.path().join("nope.pem");
        missing.key = dir.path().join("nope.key");
        let keys: Vec<String> = check_site(&missing).into_iter().map(|f| f.key).collect();
        assert_eq!(keys, ["cert", "key"]);

        // Another certificate's key.
        let other = tempfile::tempdir().unwrap();
        let foreign = files(other.path(), &["a.test"], &["a.test"]);
        let mut mismatched = ok.clone();
        mismatched.key = foreign.key;
        let f = check_site(&mismatched);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].key, "key");
        assert!(f[0].message.contains("does not go with"), "{f:?}");

        // A FIFO where the key should be: refused at once, not waited on.
        let fifo = dir.path().join("fifo.pem");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut stalling = ok.clone();
        stalling.key = fifo;
        let started = std::time::Instant::now();
        let f = check_site(&stalling);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(f[0].key, "key", "{f:?}");
        assert!(f[0].message.contains("not a regular file"), "{f:?}");

        // Garbage where the certificate should be.
        std::fs::write(dir.path().join("junk.pem"), "hello").unwrap();
        let mut junk = ok.clone();
        junk.cert = dir.path().join("junk.pem");
        let f = check_site(&junk);
        assert_eq!(f[0].key, "cert", "{f:?}");
    }
}
