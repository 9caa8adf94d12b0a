//! `condo import apache FILE... [--fpm POOL...]` and `condo import php-fpm POOL...`:
//! what a host runs today (mpm-itk / suexec vhosts, one PHP-FPM pool per user) turned
//! into condo config, and a precise list of what could not be translated.

mod apache;
mod fpm;

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

/// Something of the old config condo does not carry over, and why.
#[derive(Debug, Clone)]
pub struct Note {
    pub file: PathBuf,
    pub line: usize,
    pub directive: String,
    pub why: String,
}

impl Note {
    fn new(file: &Path, line: usize, directive: &str, why: String) -> Self {
        Self {
            file: file.to_path_buf(),
            line,
            directive: directive.to_string(),
            why,
        }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if !self.directive.is_empty() {
            write!(f, "{}: ", self.directive)?;
        }
        write!(f, "{}", self.why)
    }
}

/// How a vhost ran PHP.
#[derive(Debug, Clone, PartialEq)]
enum Php {
    Module,
    /// PHP-FPM on this unix socket.
    Fpm(PathBuf),
    /// PHP-FPM over TCP (`proxy:fcgi://host:port`).
    FpmTcp(String),
    /// A FastCGI wrapper script (mod_fcgid, FCGIWrapper, Action).
    Wrapper(String),
}

#[derive(Debug, Clone, Default)]
struct Vhost {
    file: PathBuf,
    line: usize,
    name: Option<String>,
    aliases: Vec<String>,
    root: Option<PathBuf>,
    user: Option<String>,
    group: Option<String>,
    max_clients: Option<u64>,
    nice: Option<i32>,
    index: Option<Vec<String>>,
    php: Option<Php>,
    php_settings: Vec<(String, String)>,
    cgi: bool,
    env: Vec<(String, String)>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
struct Pool {
    name: String,
    file: PathBuf,
    line: usize,
    user: Option<String>,
    group: Option<String>,
    listen: Option<String>,
    pm: Option<String>,
    max_children: Option<u64>,
    max_requests: Option<u64>,
    idle_timeout: Option<String>,
    request_timeout: Option<String>,
    rlimit_files: Option<u64>,
    env: Vec<(String, String)>,
    php_settings: Vec<(String, String)>,
}

/// One site file entry: its keys, its certificate (possibly from a later :443 vhost),
/// then its tables (env, routes), which must come after every key.
struct SiteOut {
    head: String,
    tls: Option<String>,
    tail: String,
}

/// The translation: `[tenant.*]` sections for the main file, one site file per
/// tenant, and the notes.
pub struct Imported {
    pub tenants: String,
    pub sites: BTreeMap<String, String>,
    pub notes: Vec<Note>,
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|i| quote(i))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A condo tenant name for a system user.
fn tenant_name(user: &str) -> String {
    let name: String = user
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "tenant".into()
    } else {
        name
    }
}

/// The tenant of `user`: the one it already has, or a new name of its own. Two users
/// whose names map to one tenant name (`Bob` and `bob`) get two tenants: one tenant
/// runs as one user, and one user is one tenant (`condo check` refuses a user in two).
fn tenant_of<V>(tenants: &BTreeMap<String, (String, V)>, user: &str) -> String {
    if let Some((name, _)) = tenants.iter().find(|(_, (u, _))| u == user) {
        return name.clone();
    }
    let base = tenant_name(user);
    let mut name = base.clone();
    let mut n = 1;
    while tenants.contains_key(&name) {
        n += 1;
        name = format!("{base}-{n}");
    }
    name
}

pub fn import(apache_files: &[PathBuf], fpm_files: &[PathBuf]) -> Imported {
    let mut notes = Vec::new();
    let vhosts = apache::parse(apache_files, &mut notes);
    let pools = fpm::parse(fpm_files, &mut notes);
    let pool_by_socket = |socket: &Path| {
        pools
            .iter()
            .find(|p| p.listen.as_deref().map(Path::new) == Some(socket))
    };
    // Tenant (by user) → its pool and its sites, in input order.
    // Tenant name → (user, (group, pool)).
    type TenantOut<'a> = (String, (Option<String>, Option<&'a Pool>));
    let mut tenants: BTreeMap<String, TenantOut> = BTreeMap::new();
    let mut sites: BTreeMap<String, Vec<SiteOut>> = BTreeMap::new();
    let mut seen_names: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for v in &vhosts {
        let here = |why: &str| Note::new(&v.file, v.line, "<VirtualHost", why.to_string());
        let pool = match &v.php {
            Some(Php::Fpm(socket)) => {
                let pool = pool_by_socket(socket);
                if pool.is_none() {
                    notes.push(here(&format!(
                        "PHP-FPM socket {} is named by no pool file given with --fpm: its pool settings are not carried over",
                        socket.display()
                    )));
                }
                pool
            }
            _ => None,
        };
        let user = v.user.clone().or_else(|| pool.and_then(|p| p.user.clone()));
        let (Some(user), Some(name), Some(root)) = (user, v.name.clone(), v.root.clone()) else {
            notes.push(here(
                "needs ServerName, DocumentRoot and a user (AssignUserID, SuexecUserGroup or its PHP-FPM pool's user): not imported",
            ));
            continue;
        };
        let tenant = tenant_of(&tenants, &user);
        let group = v
            .group
            .clone()
            .or_else(|| pool.and_then(|p| p.group.clone()))
            .filter(|g| *g != user);
        let entry = &mut tenants
            .entry(tenant.clone())
            .or_insert((user.clone(), (group, None)))
            .1;
        if entry.1.is_none() {
            entry.1 = pool;
        }
        let tls = match (&v.tls_cert, &v.tls_key) {
            (Some(cert), Some(key)) => Some(format!(
                "tls = {{ cert = {}, key = {} }}\n",
                quote(&cert.display().to_string()),
                quote(&key.display().to_string())
            )),
            _ => None,
        };
        // An HTTPS vhost of a name already imported adds its certificate to that site.
        if let Some((owner, index)) = seen_names.get(&name).cloned() {
            match tls {
                Some(tls) if owner == tenant => {
                    sites.get_mut(&owner).expect("recorded")[index].tls = Some(tls);
                }
                _ => notes.push(here(&format!(
                    "{name} is already imported from another vhost; skipped"
                ))),
            }
            continue;
        }
        let mut s = format!(
            "[[site]]\nname = {}\ntenant = {}\nroot = {}\n",
            quote(&name),
            quote(&tenant),
            quote(&root.display().to_string())
        );
        if !v.aliases.is_empty() {
            s.push_str(&format!("aliases = {}\n", list(&v.aliases)));
        }
        if let Some(index) = &v.index {
            s.push_str(&format!("index = {}\n", list(index)));
        }
        if let Some(n) = v.max_clients {
            s.push_str(&format!("max_clients = {n}\n"));
        }
        if let Some(n) = v.nice {
            s.push_str(&format!("nice = {n}\n"));
        }
        let head = std::mem::take(&mut s);
        let mut env = v.env.clone();
        if let Some(p) = pool {
            env.extend(p.env.iter().cloned());
        }
        if !env.is_empty() {
            s.push_str("[site.env]\n");
            for (k, val) in &env {
                s.push_str(&format!("{k} = {}\n", quote(val)));
            }
        }
        if v.cgi {
            s.push_str("[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\n");
        }
        if let Some(php) = &v.php {
            let mut command = vec!["php-cgi".to_string()];
            let settings = v
                .php_settings
                .iter()
                .chain(pool.iter().flat_map(|p| p.php_settings.iter()));
            for (k, val) in settings {
                command.push("-d".into());
                command.push(format!("{k}={val}"));
            }
            s.push_str(&format!(
                "[[site.route]]\nsuffix = \".php\"\nhandler = \"fastcgi\"\ncommand = {}\n",
                list(&command)
            ));
            match php {
                Php::FpmTcp(target) => notes.push(here(&format!(
                    "PHP-FPM over TCP ({target}) becomes condo's own php-cgi pool for the tenant"
                ))),
                Php::Wrapper(w) => notes.push(here(&format!(
                    "the PHP wrapper {w} becomes php-cgi run by condo; anything else the wrapper did is not carried over"
                ))),
                _ => {}
            }
        }
        let list = sites.entry(tenant.clone()).or_default();
        seen_names.insert(name.clone(), (tenant.clone(), list.len()));
        for alias in &v.aliases {
            seen_names.insert(alias.clone(), (tenant.clone(), list.len()));
        }
        list.push(SiteOut { head, tls, tail: s });
    }
    // Pools no vhost pointed at still name a tenant and its limits.
    for p in &pools {
        let Some(user) = &p.user else {
            notes.push(Note::new(
                &p.file,
                p.line,
                &format!("[{}]", p.name),
                "pool without `user`: not imported".into(),
            ));
            continue;
        };
        if let std::collections::btree_map::Entry::Vacant(slot) =
            tenants.entry(tenant_of(&tenants, user))
        {
            notes.push(Note::new(
                &p.file,
                p.line,
                &format!("[{}]", p.name),
                "no vhost given uses this pool: the tenant is made without sites".into(),
            ));
            slot.insert((
                user.clone(),
                (p.group.clone().filter(|g| g != user), Some(p)),
            ));
        }
    }
    let mut out = String::from("# Written by `condo import`; review before use.\n");
    for (tenant, (user, (group, pool))) in &tenants {
        out.push_str(&format!("\n[tenant.{tenant}]\nuser = {}\n", quote(user)));
        if let Some(g) = group {
            out.push_str(&format!("group = {}\n", quote(g)));
        }
        if let Some(p) = pool {
            if let Some(n) = p.max_children {
                out.push_str(&format!("workers_max = {n}\n"));
            }
            if let Some(n) = p.max_requests.filter(|&n| n > 0) {
                out.push_str(&format!("max_requests = {n}\n"));
            }
            if let Some(t) = &p.idle_timeout {
                out.push_str(&format!("idle_timeout = {}\n", quote(t)));
            }
            if let Some(t) = p.request_timeout.as_ref().filter(|t| *t != "0s") {
                out.push_str(&format!("request_timeout = {}\n", quote(t)));
            }
            if let Some(n) = p.rlimit_files {
                out.push_str(&format!("rlimit_nofile = {n}\n"));
            }
            if p.pm.as_deref() == Some("static") {
                out.push_str("workers_min = 1                # pm = static: kept warm\n");
            }
        }
    }
    Imported {
        tenants: out,
        sites: sites
            .into_iter()
            .map(|(t, s)| {
                let text: Vec<String> = s
                    .iter()
                    .map(|s| format!("{}{}{}", s.head, s.tls.as_deref().unwrap_or(""), s.tail))
                    .collect();
                (
                    t,
                    format!(
                        "# Written by `condo import`; review before use.\n{}",
                        text.join("\n")
                    ),
                )
            })
            .collect(),
        notes,
    }
}

/// Write `imported` as DIR/tenants.toml and DIR/sites/TENANT.toml.
///
/// `condo import` runs as root, often with DIR in a world-writable place (/tmp), so
/// nothing on the way may be a name another user can change: every component of DIR
/// is opened with O_NOFOLLOW from `/`, each must belong to us (or to root) and be
/// writable by no one else, except a sticky directory of root's (like /tmp), where no
/// one else can rename or remove our entries. DIR itself is made by us (mkdir fails if
/// someone else made it first) or must already be ours and not group/other-writable.
/// Files are created relative to that directory's fd with O_CREAT|O_EXCL|O_NOFOLLOW.
pub fn write_out(dir: &Path, imported: &Imported) -> anyhow::Result<()> {
    let dir_fd = trusted_dir(dir)?;
    let sites_fd = trusted_child_dir(&dir_fd, dir, "sites")?;
    write_new(&dir_fd, dir, "tenants.toml", &imported.tenants)?;
    let sites_path = dir.join("sites");
    for (tenant, text) in &imported.sites {
        write_new(&sites_fd, &sites_path, &format!("{tenant}.toml"), text)?;
    }
    Ok(())
}

fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Open `name` in `parent` as a directory without following a link, and check that no
/// one but us (or root) can change what is in it.
fn open_checked(
    parent: impl AsFd,
    name: &str,
    path: &Path,
    final_dir: bool,
) -> anyhow::Result<OwnedFd> {
    let fd = rustix::fs::openat(parent, name, dir_flags(), Mode::empty()).map_err(|e| {
        let why = if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
            "is a symbolic link or not a directory (condo import follows no links; give the real path)".to_string()
        } else {
            e.to_string()
        };
        anyhow::anyhow!("condo import --out: {}: {why}", path.display())
    })?;
    check_owner(&fd, path, final_dir)?;
    Ok(fd)
}

fn check_owner(fd: &OwnedFd, path: &Path, final_dir: bool) -> anyhow::Result<()> {
    let st = rustix::fs::fstat(fd)
        .map_err(|e| anyhow::anyhow!("condo import --out: {}: {e}", path.display()))?;
    let me = rustix::process::geteuid().as_raw();
    let mode = st.st_mode;
    let writable_by_others = mode & 0o022 != 0;
    let sticky_of_root = mode & 0o1000 != 0 && st.st_uid == 0;
    let ours = st.st_uid == me || st.st_uid == 0;
    let ok = if final_dir {
        // The output directory itself: ours, no one else may add or swap a file.
        st.st_uid == me && !writable_by_others
    } else {
        ours && (!writable_by_others || sticky_of_root)
    };
    if !ok {
        anyhow::bail!(
            "condo import --out: {} is owned by uid {} with mode {:o}: another user could \
             replace what condo writes there; give a directory that does not exist yet (it \
             is created), or one owned by uid {me} that only its owner can write, in \
             directories only root can change (e.g. /root/condo-import)",
            path.display(),
            st.st_uid,
            mode & 0o7777,
        );
    }
    Ok(())
}

/// `dir`, walked from `/` component by component (no links followed, each checked),
/// and created as the last step if it does not exist.
fn trusted_dir(dir: &Path) -> anyhow::Result<OwnedFd> {
    use std::path::Component;
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()?.join(dir)
    };
    let names: Vec<&str> = absolute
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_str().ok_or_else(|| {
                anyhow::anyhow!("condo import --out: {}: not UTF-8", absolute.display())
            })),
            Component::ParentDir => Some(Err(anyhow::anyhow!(
                "condo import --out: {}: give a path without `..`",
                absolute.display()
            ))),
            _ => None,
        })
        .collect::<anyhow::Result<_>>()?;
    let Some((last, ancestors)) = names.split_last() else {
        anyhow::bail!("condo import --out: / is not an output directory");
    };
    let mut here = PathBuf::from("/");
    let mut fd = rustix::fs::open("/", dir_flags(), Mode::empty())
        .map_err(|e| anyhow::anyhow!("opening /: {e}"))?;
    check_owner(&fd, &here, false)?;
    for name in ancestors {
        here.push(name);
        fd = open_checked(&fd, name, &here, false)?;
    }
    trusted_child_dir(&fd, &here, last)
}

/// `name` in the checked directory `parent`: made now (0755) or already ours.
fn trusted_child_dir(parent: &OwnedFd, parent_path: &Path, name: &str) -> anyhow::Result<OwnedFd> {
    let path = parent_path.join(name);
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
        Ok(()) => {
            let fd = open_checked(parent, name, &path, true)?;
            // Whatever the umask: the admin reads the result, and may copy it.
            let fd_rw = rustix::fs::openat(
                parent,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| anyhow::anyhow!("condo import --out: {}: {e}", path.display()))?;
            rustix::fs::fchmod(&fd_rw, Mode::from_raw_mode(0o755)).map_err(|e| {
                anyhow::anyhow!("condo import --out: chmod {}: {e}", path.display())
            })?;
            Ok(fd)
        }
        Err(rustix::io::Errno::EXIST) => open_checked(parent, name, &path, true),
        Err(e) => anyhow::bail!("condo import --out: creating {}: {e}", path.display()),
    }
}

/// Create `name` in the checked directory `dir` (replacing a file of an earlier run,
/// which only we could have put there) without following a link.
fn write_new(dir: &OwnedFd, dir_path: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let path = dir_path.join(name);
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => anyhow::bail!("condo import --out: replacing {}: {e}", path.display()),
    }
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| anyhow::anyhow!("condo import --out: creating {}: {e}", path.display()))?;
    std::fs::File::from(fd)
        .write_all(text.as_bytes())
        .map_err(|e| anyhow::anyhow!("condo import --out: writing {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tenant_tests {
    use super::*;

    #[test]
    fn one_user_is_one_tenant_and_one_tenant_one_user() {
        let dir = tempfile::tempdir().unwrap();
        let vhost = |name: &str, user: &str| {
            format!(
                "<VirtualHost *:80>\nServerName {name}\nDocumentRoot /srv/{name}\nAssignUserID {user} {user}\n</VirtualHost>\n"
            )
        };
        let file = dir.path().join("sites.conf");
        std::fs::write(
            &file,
            vhost("a.example", "bob") + &vhost("b.example", "Bob") + &vhost("c.example", "bob"),
        )
        .unwrap();
        let imported = import(&[file], &[]);
        // bob's two sites in one tenant; Bob (another account) in a tenant of its own.
        assert_eq!(
            imported.tenants.matches("[tenant.").count(),
            2,
            "{}",
            imported.tenants
        );
        assert!(
            imported.tenants.contains("[tenant.bob]\nuser = \"bob\""),
            "{}",
            imported.tenants
        );
        assert!(
            imported.tenants.contains("[tenant.bob-2]\nuser = \"Bob\""),
            "{}",
            imported.tenants
        );
        let bob = &imported.sites["bob"];
        assert_eq!(bob.matches("[[site]]").count(), 2, "{bob}");
        let bob2 = &imported.sites["bob-2"];
        assert!(bob2.contains("b.example"), "{bob2}");
    }
}
