//! `condo import apache FILE... [--fpm POOL...]` and `condo import php-fpm POOL...`:
//! what a host runs today (mpm-itk / suexec vhosts, one PHP-FPM pool per user) turned
//! into condo config, and a precise list of what could not be translated.

mod apache;
mod fpm;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

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
    let mut tenants: BTreeMap<String, (String, Option<String>, Option<&Pool>)> = BTreeMap::new();
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
        let tenant = tenant_name(&user);
        let group = v
            .group
            .clone()
            .or_else(|| pool.and_then(|p| p.group.clone()))
            .filter(|g| *g != user);
        let entry = tenants
            .entry(tenant.clone())
            .or_insert((user.clone(), group, None));
        if entry.2.is_none() {
            entry.2 = pool;
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
        if let std::collections::btree_map::Entry::Vacant(slot) = tenants.entry(tenant_name(user)) {
            notes.push(Note::new(
                &p.file,
                p.line,
                &format!("[{}]", p.name),
                "no vhost given uses this pool: the tenant is made without sites".into(),
            ));
            slot.insert((user.clone(), p.group.clone().filter(|g| g != user), Some(p)));
        }
    }
    let mut out = String::from("# Written by `condo import`; review before use.\n");
    for (tenant, (user, group, pool)) in &tenants {
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
