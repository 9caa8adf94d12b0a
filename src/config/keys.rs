//! Every config key, with its section, value, default and meaning: the one list that
//! `condo man --section 5` renders as condo.toml(5) and that `condo check` draws its
//! "did you mean" from. A unit test holds it equal to the keys serde accepts, so a key
//! added to a section without a line here fails the build's tests, not a user.

/// Where a key is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Server,
    /// A table in `listen = [...]`.
    Listen,
    Certificate,
    /// `[defaults]` and `[tenant.NAME]` (a tenant alone names `user` and `group`).
    Tenant,
    Site,
    /// `tls = { ... }` of a site.
    SiteTls,
    Route,
}

impl Section {
    pub const ALL: [Section; 7] = [
        Section::Server,
        Section::Listen,
        Section::Certificate,
        Section::Tenant,
        Section::Site,
        Section::SiteTls,
        Section::Route,
    ];

    /// The heading the section has in condo.toml(5).
    pub fn title(self) -> &'static str {
        match self {
            Section::Server => "[server] (main file)",
            Section::Listen => "listen = [{ ... }] (a listener of [server])",
            Section::Certificate => "[[certificate]] (main file: the host's certificates)",
            Section::Tenant => "[defaults] and [tenant.NAME] (main file)",
            Section::Site => "[[site]] (site files)",
            Section::SiteTls => "tls = { ... } (a site's own certificate)",
            Section::Route => "[[site.route]] (site files and tenants' own files)",
        }
    }
}

pub struct Key {
    pub section: Section,
    pub name: &'static str,
    /// What the value looks like, e.g. `"10s"` or `[1000, 60000]`.
    pub value: &'static str,
    /// Empty when the key has no default (required, or off when absent: `doc` says).
    pub default: &'static str,
    pub doc: &'static str,
}

const fn key(
    section: Section,
    name: &'static str,
    value: &'static str,
    default: &'static str,
    doc: &'static str,
) -> Key {
    Key {
        section,
        name,
        value,
        default,
        doc,
    }
}

use Section::*;

#[rustfmt::skip]
pub const KEYS: &[Key] = &[
    // ---- [server] ----
    key(Server, "listen", "[\"IP:port\", { addr = \"IP:port\", ... }]", "[]",
        "Listening sockets: an address, or a table (see the listen section) that also sets the hand-over, TLS or PROXY protocol of that listener."),
    key(Server, "tls_listen", "[\"IP:port\"]", "[]",
        "HTTPS listeners (the same as listen entries with tls = true)."),
    key(Server, "handover", "\"pass\" | \"proxy\"", "\"pass\"",
        "How a connection reaches a tenant's worker for listeners that do not say: pass (the connection's fd itself) or proxy (relayed by the dispatcher)."),
    key(Server, "user", "\"NAME\"", "\"condo\"",
        "The dispatcher's unprivileged user; never root."),
    key(Server, "uid_range", "[MIN, MAX]", "[1000, 60000]",
        "Tenants' uid, gid and every supplementary group must fall in here; 0 never does."),
    key(Server, "sites", "\"GLOB\"", "\"sites/*.toml\"",
        "The site files, relative to the main file."),
    key(Server, "log_dir", "\"PATH\"", "\"/var/log/condo\"",
        "error.log and each site's <site>.access.log and <site>.error.log."),
    key(Server, "run_dir", "\"PATH\"", "\"/run/condo\"",
        "Pid file, control socket, metrics text; one running condo per run_dir."),
    key(Server, "default_site", "\"NAME\"", "",
        "Serves requests whose Host matches no site (none by default: see unknown_host)."),
    key(Server, "unknown_host", "404 | 421", "404",
        "The answer to an unknown Host when there is no default_site."),
    key(Server, "worker_threads", "1-64", "1",
        "Threads per tenant worker; one thread per tenant spreads many tenants over the cores."),
    key(Server, "dispatchers", "1-64", "1",
        "Dispatcher processes; above 1 each has its own SO_REUSEPORT sockets."),
    key(Server, "worker_queue_max", "N", "256",
        "Connections that may wait at once for one tenant's worker (per dispatcher); beyond it 503."),
    key(Server, "tenant_relays_max", "N", "a quarter of max_connections",
        "Connections of one tenant's sites a dispatcher relays at once (proxy hand-over, the host's certificates, h2); beyond it 503."),
    key(Server, "admin_listen", "\"127.0.0.1:PORT\"", "",
        "Loopback only: /metrics (Prometheus, bearer token) and /health. Off when absent."),
    key(Server, "admin_token_file", "\"PATH\"", "\"<state_dir>/admin.token\"",
        "The bearer token /metrics asks for; made 0600 when missing."),
    key(Server, "cgroup", "\"auto\" | \"v1\" | \"v2\" | \"off\"", "\"auto\"",
        "Which cgroup hierarchy holds the tenants (auto: v2, else v1)."),
    key(Server, "cgroup_root", "\"PATH\"", "\"/sys/fs/cgroup\"",
        "The cgroup2 mount, or the directory of the v1 hierarchies."),
    key(Server, "cgroup_parent", "\"NAME\"", "\"condo\" for run_dir /run/condo, else \"condo-<run_dir's last part>-<hash>\"",
        "The group that holds one group per tenant; one running condo per parent."),
    key(Server, "state_dir", "\"PATH\"", "\"/var/lib/condo\"",
        "The usage ledger (usage.json) and the admin token; 0700 root."),
    key(Server, "proxy_protocol_from", "[\"IP\", \"CIDR\"]", "[]",
        "Load balancers whose PROXY protocol headers are believed."),
    key(Server, "max_request_line", "BYTES", "8192",
        "A longer request line is 414."),
    key(Server, "max_head_bytes", "BYTES", "16384",
        "A larger request head is 431."),
    key(Server, "max_headers", "N", "100",
        "More header fields is 431."),
    key(Server, "max_connections", "N", "16384",
        "Client connections the dispatcher holds at once; beyond it new ones are closed and logged."),
    key(Server, "header_timeout", "DURATION", "\"10s\"",
        "From the first byte of a request head to its end; then 408."),
    key(Server, "body_timeout", "DURATION", "\"60s\"",
        "Longest wait for the next byte of a request body; then 408 and the connection closes."),
    key(Server, "keepalive_timeout", "DURATION", "\"75s\"",
        "Idle time allowed between requests on a connection."),
    key(Server, "send_timeout", "DURATION", "\"60s\"",
        "Longest wait for a client to take the next bytes of a response; then the connection is reset."),
    // ---- listen tables ----
    key(Listen, "addr", "\"IP:port\"", "", "Required: the address to listen on."),
    key(Listen, "handover", "\"pass\" | \"proxy\"", "server.handover",
        "This listener's hand-over."),
    key(Listen, "tls", "BOOL", "false", "HTTPS on this listener."),
    key(Listen, "proxy_protocol", "BOOL", "false",
        "Connections start with a PROXY protocol header (from proxy_protocol_from only)."),
    // ---- [[certificate]] ----
    key(Certificate, "names", "[\"HOST\", \"*.DOMAIN\"]", "",
        "Required: host names the certificate covers; *.domain covers one label below it."),
    key(Certificate, "cert", "\"PATH\"", "", "Required: the chain, PEM."),
    key(Certificate, "key", "\"PATH\"", "", "Required: the private key, PEM."),
    key(Certificate, "default", "BOOL", "false",
        "Served for a ClientHello without SNI or with one no certificate covers."),
    // ---- [defaults] / [tenant.NAME] ----
    key(Tenant, "user", "\"NAME\"", "",
        "A tenant's Unix account (required in [tenant.NAME]): its uid, primary gid and groups (initgroups)."),
    key(Tenant, "group", "\"NAME\"", "the user's primary group",
        "Another primary group for the tenant."),
    key(Tenant, "workers_min", "N", "0", "Workers kept running; 0 scales the tenant to zero."),
    key(Tenant, "workers_max", "1-256", "4",
        "Worker processes, and the default processes_max of the tenant's FastCGI routes."),
    key(Tenant, "idle_timeout", "DURATION", "\"60s\"",
        "A worker (and a FastCGI process) idle this long stops."),
    key(Tenant, "max_requests", "N", "10000",
        "The default max_requests of the tenant's FastCGI routes: a process is replaced after this many requests."),
    key(Tenant, "worker_max_requests", "N", "",
        "condo's own worker is replaced after this many requests (no connection lost). Never by count when absent."),
    key(Tenant, "request_timeout", "DURATION", "\"300s\"",
        "The default timeout of the tenant's routes: a request running longer is killed (504)."),
    key(Tenant, "worker_memory_max", "SIZE", "",
        "A worker grown past this is replaced. Off when absent."),
    key(Tenant, "memory_max", "SIZE | \"max\"", "\"1G\"",
        "All the tenant's processes together (cgroup memory.max); over it the kernel OOM-kills."),
    key(Tenant, "cpu_max", "CORES", "",
        "CPU bandwidth in cores, e.g. 0.5 (cgroup cpu.max). No cap when absent."),
    key(Tenant, "pids_max", "N | \"max\"", "512",
        "Processes and threads together (cgroup pids.max): a fork bomb stops here."),
    key(Tenant, "io_weight", "1-10000", "", "The tenant's share of disk time (cgroup io.weight; the kernel gives 100 when absent)."),
    key(Tenant, "nice", "0-19", "", "Scheduling priority of the tenant's processes (unchanged when absent)."),
    key(Tenant, "rlimit_nofile", "N | \"max\"", "", "RLIMIT_NOFILE of each process."),
    key(Tenant, "rlimit_nproc", "N | \"max\"", "", "RLIMIT_NPROC of each process."),
    key(Tenant, "rlimit_as", "SIZE | \"max\"", "", "RLIMIT_AS of each process."),
    key(Tenant, "rlimit_core", "SIZE | \"max\"", "", "RLIMIT_CORE of each process."),
    key(Tenant, "rlimit_cpu", "SECONDS | \"max\"", "",
        "RLIMIT_CPU of the processes the worker starts (not the worker itself)."),
    key(Tenant, "rlimit_fsize", "SIZE | \"max\"", "",
        "RLIMIT_FSIZE of the processes the worker starts (not the worker itself)."),
    key(Tenant, "isolation", "\"standard\" | \"cage\" | \"uid\"", "\"standard\"",
        "The fences around the worker: standard (seccomp, Landlock, no_new_privs), cage (standard plus private mounts), uid (uid, groups, cgroup and rlimits only)."),
    key(Tenant, "allow_read", "[\"PATH\"]", "[]", "More paths the tenant may read under Landlock."),
    key(Tenant, "allow_write", "[\"PATH\"]", "[]", "More paths the tenant may change under Landlock."),
    key(Tenant, "user_config", "\"~/FILE\" | \"PATH\"", "",
        "The tenant's own config layer, read by its worker as the tenant. Off when absent."),
    key(Tenant, "user_config_locked", "[\"KEY\"]", "[]",
        "Keys of the tenant's own layer that keep the admin's value."),
    // ---- [[site]] ----
    key(Site, "name", "\"HOST\"", "", "Required: the site's host name (matched case-insensitively, without port or trailing dot)."),
    key(Site, "aliases", "[\"HOST\"]", "[]", "More host names of the site."),
    key(Site, "tenant", "\"NAME\"", "", "Required: the tenant whose uid serves the site."),
    key(Site, "root", "\"PATH\"", "", "Required, absolute: the document root, opened by the tenant's worker with the tenant's permissions."),
    key(Site, "index", "[\"FILE\"]", "[\"index.html\", \"index.htm\"]",
        "Index files of a directory; an index file runs through the route its name matches."),
    key(Site, "autoindex", "BOOL", "false", "Directory listings."),
    key(Site, "deny_hidden", "BOOL", "true",
        "A path with a segment starting with \".\" is 404 (except /.well-known/)."),
    key(Site, "deny_backup", "BOOL", "true",
        "Backup and editor names (x~, #x#, .bak .orig .old .save .swp .swo .swx) are 404."),
    key(Site, "compress", "BOOL", "true",
        "gzip/br on the fly for static text types of 1 KiB to 4 MiB when the client accepts it (never for ranges). Precompressed FILE.br / FILE.gz siblings are served even when false."),
    key(Site, "env", "{ NAME = \"VALUE\" }", "{}", "Environment for the site's scripts and apps."),
    key(Site, "route", "[[site.route]]", "[]",
        "Handlers, tried in order; a request no route matches is a static file."),
    key(Site, "fallback", "\"/SCRIPT\"", "",
        "Front controller: a request whose path names neither a file nor a directory is served by this file, through its route, with the original REQUEST_URI (nginx's try_files $uri $uri/ /index.php?$args). Off when absent."),
    key(Site, "max_body", "SIZE", "\"64M\"",
        "Largest request body, Content-Length or chunked alike; over it 413 at once, before any script starts."),
    key(Site, "error_pages", "{ STATUS = \"/PATH\" }", "{}",
        "Pages below the site root for condo's own errors of that status; a script may be one (REDIRECT_STATUS and REDIRECT_URL set); the status is kept."),
    key(Site, "no_scripts", "[\"/PREFIX/\"]", "[]",
        "Path prefixes under which no script handler runs: a .php there is 403, never executed nor served as source (upload directories)."),
    key(Site, "max_clients", "N", "", "Script and app requests of this site served at once (static files do not count). No cap when absent."),
    key(Site, "max_connections", "N", "",
        "Client connections open to this site at once; a new one beyond gets 503. No cap when absent."),
    key(Site, "nice", "0-19", "the tenant's nice", "Priority of this site's scripts and apps (at least the tenant's)."),
    key(Site, "tls", "{ cert = \"PATH\", key = \"PATH\" }", "",
        "The site's own certificate, read by the tenant's worker as the tenant, which terminates TLS."),
    key(Site, "https_redirect", "BOOL | PORT", "false",
        "Plain HTTP is redirected to https:// (301, 308 for methods other than GET and HEAD), on the given port if one is given."),
    key(Site, "hsts", "\"max-age=...\"", "", "Strict-Transport-Security on HTTPS responses."),
    key(Site, "queue_max", "N", "max_clients", "Requests waiting for a max_clients slot; more get 503 at once."),
    key(Site, "queue_timeout", "DURATION", "\"10s\"", "A request waiting longer for a slot gets 503."),
    // ---- tls = { ... } ----
    key(SiteTls, "cert", "\"PATH\"", "", "Required: the chain, PEM, readable by the tenant."),
    key(SiteTls, "key", "\"PATH\"", "", "Required: the private key, PEM, readable by the tenant."),
    // ---- [[site.route]] ----
    key(Route, "path", "\"/PREFIX/\"", "", "The route matches requests below this path prefix (or give suffix)."),
    key(Route, "suffix", "\".EXT\"", "", "The route matches files ending in this (required for fastcgi)."),
    key(Route, "handler", "\"cgi\" | \"fastcgi\" | \"app\" | \"static\"", "", "Required: what serves the route."),
    key(Route, "timeout", "DURATION", "the tenant's request_timeout", "A request running longer is killed (504)."),
    key(Route, "command", "[\"PROGRAM\", \"ARG\"]", "",
        "fastcgi and app: the program to start as the tenant (looked up in PATH)."),
    key(Route, "socket", "\"PATH\"", "",
        "fastcgi: an app the tenant runs itself, used only if its peer runs as the tenant (instead of command)."),
    key(Route, "processes_max", "N", "the tenant's workers_max", "fastcgi: processes, and requests served at once."),
    key(Route, "idle_timeout", "DURATION", "the tenant's idle_timeout", "fastcgi and app: stop processes idle this long."),
    key(Route, "max_requests", "N", "the tenant's max_requests", "fastcgi: a process is replaced after this many requests."),
    key(Route, "workdir", "\"PATH\"", "the site root", "fastcgi and app: the processes' working directory (absolute)."),
];

/// The keys of one section, in the table's order.
pub fn of(section: Section) -> impl Iterator<Item = &'static Key> {
    KEYS.iter().filter(move |k| k.section == section)
}

/// The section an unknown key's dotted path (as serde_ignored gives it, e.g.
/// `server.max_conections` or `site.0.route.1.handlr`) was written in, and its last part.
fn section_of(path: &str) -> Option<(Section, &str)> {
    let parts: Vec<&str> = path.split('.').collect();
    let name = *parts.last()?;
    let is_index = |p: &&str| p.parse::<usize>().is_ok();
    let words: Vec<&str> = parts[..parts.len() - 1]
        .iter()
        .filter(|p| !is_index(p))
        .copied()
        .collect();
    let section = match words.as_slice() {
        ["server"] => Server,
        ["server", "listen"] => Listen,
        ["certificate"] => Certificate,
        ["defaults"] | ["tenant", _] => Tenant,
        ["site"] => Site,
        ["site", "tls"] => SiteTls,
        ["site", "route"] => Route,
        _ => return None,
    };
    Some((section, name))
}

/// The known key closest to an unknown one in the same section, when it is close
/// enough to be a typo (at most 2 edits, or one key contains the other).
pub fn suggest(path: &str) -> Option<&'static str> {
    let (section, name) = section_of(path)?;
    // No key is this long; a name from a hostile file may be megabytes, and the edit
    // distance costs its length times each key's.
    if name.len() > 64 {
        return None;
    }
    of(section)
        .map(|k| (edit_distance(name, k.name), k.name))
        .filter(|(d, known)| *d <= 2 || (name.len() > 3 && known.contains(name)))
        .min_by_key(|(d, _)| *d)
        .map(|(_, known)| known)
}

/// Levenshtein distance; names are short, so the plain O(n·m) table is fine.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// condo.toml(5) in roff, from [`KEYS`].
pub fn man_page(version: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        ".TH CONDO.TOML 5 \"\" \"condo {}\" \"File Formats\"\n",
        roff(version)
    ));
    out.push_str(
        ".SH NAME\ncondo.toml \\- configuration of condo, the shared-hosting web server\n",
    );
    out.push_str(".SH DESCRIPTION\n");
    out.push_str(
        "One main file (\\fI/etc/condo/condo.toml\\fR) with \\fB[server]\\fR, \\fB[[certificate]]\\fR, \\fB[defaults]\\fR and \\fB[tenant.NAME]\\fR, plus site files (\\fB[server] sites\\fR, default \\fIsites/*.toml\\fR) with \\fB[[site]]\\fR tables. \
Unknown keys are errors. A mistake in the main file stops condo from starting; a mistake in a site file drops only that file's sites. \
\\fBcondo check\\fR prints every mistake as file:line:column. \
Sizes take K, M and G (\\fB\"512M\"\\fR); durations take ms, s, m and h (\\fB\"10s\"\\fR).\n",
    );
    for section in Section::ALL {
        out.push_str(&format!(".SH {}\n", roff(&section.title().to_uppercase())));
        for k in of(section) {
            out.push_str(&format!(
                ".TP\n\\fB{}\\fR = \\fI{}\\fR\n{}",
                roff(k.name),
                roff(k.value),
                roff(k.doc)
            ));
            if !k.default.is_empty() {
                out.push_str(&format!(" Default: \\fB{}\\fR.", roff(k.default)));
            }
            out.push('\n');
        }
    }
    out.push_str(".SH FILES\n.TP\n/etc/condo/condo.toml\nThe main file.\n.TP\n/etc/condo/sites/*.toml\nSite files.\n");
    out.push_str(".SH SEE ALSO\n\\fBcondo\\fR(8)\n");
    out
}

/// Text for roff: backslashes escaped, and a line never starting with `.` or `'`.
pub fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_aux::serde_introspection::serde_introspect;

    fn names(section: Section) -> Vec<&'static str> {
        let mut v: Vec<_> = of(section).map(|k| k.name).collect();
        v.sort_unstable();
        v
    }

    fn sorted(fields: &'static [&'static str]) -> Vec<&'static str> {
        let mut v = fields.to_vec();
        v.sort_unstable();
        v
    }

    /// The table and the keys serde accepts are the same, section by section: a key
    /// added to the config without its line here (or the reverse) fails here.
    #[test]
    fn the_table_is_every_key_serde_accepts() {
        use super::super::*;
        assert_eq!(names(Server), sorted(serde_introspect::<ServerSection>()));
        assert_eq!(names(Listen), sorted(serde_introspect::<ListenTable>()));
        assert_eq!(
            names(Certificate),
            sorted(serde_introspect::<CertificateSection>())
        );
        assert_eq!(names(Tenant), sorted(serde_introspect::<TenantSection>()));
        assert_eq!(names(Site), sorted(serde_introspect::<SiteSection>()));
        assert_eq!(names(SiteTls), sorted(serde_introspect::<SiteTls>()));
        assert_eq!(names(Route), sorted(serde_introspect::<RouteSection>()));
        for k in KEYS {
            assert!(!k.doc.is_empty() && !k.value.is_empty(), "{}", k.name);
        }
    }

    #[test]
    fn typos_get_the_closest_key_of_their_section() {
        assert_eq!(suggest("server.max_conections"), Some("max_connections"));
        assert_eq!(suggest("tenant.alice.memmory_max"), Some("memory_max"));
        assert_eq!(suggest("defaults.cpumax"), Some("cpu_max"));
        assert_eq!(suggest("site.0.route.1.handlr"), Some("handler"));
        assert_eq!(suggest("site.2.tls.crt"), Some("cert"));
        assert_eq!(suggest("server.listen.0.adr"), Some("addr"));
        // A key of another section is not offered, nor a far-off name.
        assert_eq!(suggest("server.handlr"), None);
        assert_eq!(suggest("site.0.zzzzzzzz"), None);
        assert_eq!(suggest("nosuchsection.key"), None);
        // A huge name gets no suggestion (and no edit distance: no key is that long).
        assert_eq!(suggest(&format!("site.0.{}", "m".repeat(5 << 20))), None);
    }

    #[test]
    fn the_man_page_is_roff_with_every_key() {
        let page = man_page("1.0");
        assert!(page.starts_with(".TH CONDO.TOML 5"));
        for k in KEYS {
            assert!(
                page.contains(&format!("\\fB{}\\fR =", roff(k.name))),
                "{}",
                k.name
            );
        }
        // No control characters (a form feed where a font escape was meant).
        assert!(!page.chars().any(|c| c.is_control() && c != '\n'));
        // No line starts a request by accident.
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix('.') {
                let request = rest.split_whitespace().next().unwrap_or("");
                assert!(
                    ["TH", "SH", "TP"].contains(&request),
                    "stray request line {line:?}"
                );
            }
        }
    }
}
