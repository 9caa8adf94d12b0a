//! A tenant's own config layer (`user_config` in the admin's `[tenant.NAME]`): the
//! classic ISP recipe, made safe.
//!
//! Layers, lowest first: the admin's site settings (defaults) → the tenant's file →
//! the keys the admin locks (`user_config_locked`), which always keep the admin's
//! value. The tenant's file may set, for its own sites only, `index`, `autoindex`,
//! `env` and `route` (handlers, app commands, timeouts); anything else — names, root,
//! limits, uid, TLS, another tenant's site — is refused with file, line and key.
//!
//! The file is read and parsed by the tenant's worker, which runs as the tenant:
//! root never opens a file the tenant can write. A file with errors changes nothing:
//! the last version that was good keeps serving (the master keeps it, as the
//! structure the worker sent, not as text).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Diagnostic, Pool, RouteConfig, RouteSection, Site, Source, validate_route};

/// The keys a tenant's file may set in a `[[site]]`.
pub const TENANT_KEYS: [&str; 4] = ["index", "autoindex", "env", "route"];

/// What a tenant's file says about one of its sites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteLayer {
    pub site: String,
    pub index: Option<Vec<String>>,
    pub autoindex: Option<bool>,
    pub env: Option<Vec<(String, String)>>,
    pub routes: Option<Vec<RouteConfig>>,
}

#[derive(Deserialize)]
struct UserSite {
    name: String,
    index: Option<Vec<String>>,
    autoindex: Option<bool>,
    env: Option<BTreeMap<String, String>>,
    route: Option<Vec<RouteSection>>,
}

/// Parse and check a tenant's file. `sites`: the tenant's sites as the admin
/// configured them; `locked`: keys the admin keeps. `Err`: every mistake, and nothing
/// of the file applies.
pub fn parse(
    path: &Path,
    text: String,
    sites: &[Site],
    locked: &[String],
    pool: &Pool,
) -> Result<Vec<SiteLayer>, Vec<Diagnostic>> {
    parse_scoped(path, text, Some(sites), locked, pool)
}

/// [`parse`] without the admin's config (`condo check --user-config` run by a tenant
/// that cannot read it): every rule of a tenant's file but "one of this tenant's
/// sites" and the locked keys, which only the admin's config knows.
pub fn parse_unscoped(
    path: &Path,
    text: String,
    pool: &Pool,
) -> Result<Vec<SiteLayer>, Vec<Diagnostic>> {
    parse_scoped(path, text, None, &[], pool)
}

fn parse_scoped(
    path: &Path,
    text: String,
    sites: Option<&[Site]>,
    locked: &[String],
    pool: &Pool,
) -> Result<Vec<SiteLayer>, Vec<Diagnostic>> {
    let source = Source::from_text(path, text);
    let mut diags = Vec::new();
    let (file, found) = source.deserialize_each::<UserSite>("site");
    // Unknown keys are the admin's keys, as far as a tenant is concerned.
    let mut refused_sites = Vec::new();
    for d in found {
        let parts: Vec<&str> = d.key.split('.').collect();
        let message = match parts.as_slice() {
            _ if !d.message.starts_with("unknown key") => d.message.clone(),
            [top] => format!(
                "`{top}` may only be set by the admin; a tenant's file sets only [[site]] tables"
            ),
            ["site", i, name] => {
                refused_sites.push(i.to_string());
                format!(
                    "`{name}` may only be set by the admin; a tenant's file may set {} of its own sites",
                    TENANT_KEYS.join(", ")
                )
            }
            _ => d.message.clone(),
        };
        diags.push(Diagnostic { message, ..d });
    }
    let Some(file) = file else {
        return Err(diags);
    };
    let mut layers = Vec::new();
    for (i, entry) in file.into_iter().enumerate() {
        let key = format!("site.{i}");
        let Some(entry) = entry else { continue };
        let mut refused = refused_sites.contains(&i.to_string());
        for (name, set) in [
            ("index", entry.index.is_some()),
            ("autoindex", entry.autoindex.is_some()),
            ("env", entry.env.is_some()),
            ("route", entry.route.is_some()),
        ] {
            if set && locked.iter().any(|l| l == name) {
                diags.push(source.error(
                    &format!("{key}.{name}"),
                    format!("`{name}` is locked by the admin (user_config_locked)"),
                ));
                refused = true;
            }
        }
        if refused {
            continue;
        }
        if let Some(sites) = sites
            && !sites.iter().any(|s| s.name == entry.name)
        {
            diags.push(source.error(
                &format!("{key}.name"),
                format!(
                    "`{}` is not one of this tenant's sites ({})",
                    entry.name,
                    sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
            continue;
        }
        let routes = entry.route.map(|routes| {
            routes
                .iter()
                .enumerate()
                .filter_map(|(j, r)| {
                    validate_route(&source, &format!("{key}.route.{j}"), r, pool, &mut diags)
                })
                .collect()
        });
        if let Some(env) = &entry.env {
            for name in env.keys() {
                let valid = !name.is_empty()
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    diags.push(source.error(
                        &format!("{key}.env.{name}"),
                        "environment names use A-Z, a-z, 0-9 and _ and do not start with a digit",
                    ));
                }
            }
        }
        layers.push(SiteLayer {
            site: entry.name,
            index: entry.index,
            autoindex: entry.autoindex,
            env: entry.env.map(|e| e.into_iter().collect()),
            routes,
        });
    }
    if diags.is_empty() {
        Ok(layers)
    } else {
        diags.sort_by_key(|d| (d.line, d.column));
        Err(diags)
    }
}

/// At most this many of a tenant file's mistakes are logged (the rest are counted).
const REPORTED_MISTAKES: usize = 20;
/// And each of them at most this long: a key or a message quoting the tenant's text
/// may be megabytes long.
const REPORTED_LENGTH: usize = 1024;

/// The mistakes of a tenant's file as log lines, one per mistake: the file is the
/// tenant's text, so each line is escaped (a key holding a newline cannot start a
/// line of its own) and cut, and there are at most [`REPORTED_MISTAKES`] of them.
pub fn report(diags: &[Diagnostic]) -> String {
    let mut lines: Vec<String> = diags
        .iter()
        .take(REPORTED_MISTAKES)
        .map(|d| crate::logging::escape(d.to_string().as_bytes(), REPORTED_LENGTH))
        .collect();
    if diags.len() > REPORTED_MISTAKES {
        lines.push(format!(
            "... and {} more mistakes",
            diags.len() - REPORTED_MISTAKES
        ));
    }
    lines.join("\n")
}

/// The admin's site with a tenant layer on top.
pub fn apply(site: &mut Site, layer: &SiteLayer) {
    if let Some(index) = &layer.index {
        site.index = index.clone();
    }
    if let Some(autoindex) = layer.autoindex {
        site.autoindex = autoindex;
    }
    if let Some(env) = &layer.env {
        // The tenant's variables on top of the admin's; the admin's names win.
        for (name, value) in env {
            if !site.env.iter().any(|(n, _)| n == name) {
                site.env.push((name.clone(), value.clone()));
            }
        }
    }
    if let Some(routes) = &layer.routes {
        site.routes = routes.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str) -> Site {
        Site {
            name: name.into(),
            aliases: vec![],
            tenant: "a".into(),
            root: "/srv/a".into(),
            index: vec!["index.html".into()],
            autoindex: false,
            deny_hidden: true,
            deny_backup: true,
            compress: true,
            env: vec![("APP_ENV".into(), "prod".into())],
            routes: vec![],
            max_clients: None,
            max_connections: None,
            queue_max: 0,
            queue_timeout: std::time::Duration::from_secs(10),
            nice: None,
            process_rlimits: vec![],
            tls: None,
            https_redirect: None,
            hsts: None,
            fallback: None,
            max_body: crate::config::DEFAULT_MAX_BODY,
            error_pages: vec![],
            no_scripts: vec![],
        }
    }

    fn run(text: &str, locked: &[&str]) -> Result<Vec<SiteLayer>, Vec<String>> {
        let locked: Vec<String> = locked.iter().map(|s| s.to_string()).collect();
        parse(
            Path::new("/home/a/condo.toml"),
            text.to_string(),
            &[site("a.example")],
            &locked,
            &Pool::default(),
        )
        .map_err(|d| d.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn own_site_routes_index_and_env_apply() {
        let layers = run(
            "[[site]]\nname = \"a.example\"\nindex = [\"index.php\"]\nautoindex = true\n[site.env]\nMODE = \"dev\"\nAPP_ENV = \"mine\"\n[[site.route]]\nsuffix = \".php\"\nhandler = \"fastcgi\"\ncommand = [\"php-cgi\"]\n",
            &[],
        )
        .unwrap();
        let mut s = site("a.example");
        apply(&mut s, &layers[0]);
        assert_eq!(s.index, vec!["index.php"]);
        assert!(s.autoindex);
        assert_eq!(s.routes.len(), 1);
        assert!(s.env.contains(&("MODE".into(), "dev".into())));
        // The admin's variable stays the admin's.
        assert!(s.env.contains(&("APP_ENV".into(), "prod".into())));
        assert!(!s.env.contains(&("APP_ENV".into(), "mine".into())));
    }

    #[test]
    fn admin_keys_other_sites_and_locked_keys_are_refused_with_their_place() {
        let errors = run(
            "[server]\nuser = \"root\"\n\n[[site]]\nname = \"a.example\"\nroot = \"/\"\nmax_clients = 1000\n\n[[site]]\nname = \"b.example\"\n\n[[site]]\nname = \"a.example\"\nenv = { \"1BAD\" = \"x\" }\n",
            &[],
        )
        .unwrap_err();
        let all = errors.join("\n");
        for (needle, line) in [
            ("`server", ":1:"),
            ("site.0.root", ":6:"),
            ("site.0.max_clients", ":7:"),
            ("not one of this tenant's sites", ":10:"),
            ("environment names", ":14:"),
        ] {
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains(needle) && e.contains(line)),
                "{needle} at {line}:\n{all}"
            );
        }
        let locked = run("[[site]]\nname = \"a.example\"\nroute = []\n", &["route"]).unwrap_err();
        assert!(locked[0].contains("locked by the admin"), "{locked:?}");
    }

    #[test]
    fn a_forged_line_or_a_huge_key_is_reported_escaped_and_cut() {
        let key = "x".repeat(5 << 20);
        let text = format!(
            "[[site]]\nname = \"a.example\"\n\"evil\\n2026-01-01T00:00:00Z ERROR forged\" = 1\n\"{key}\" = 2\n"
        );
        let diags = parse(
            Path::new("/home/a/condo.toml"),
            text,
            &[site("a.example")],
            &[],
            &Pool::default(),
        )
        .unwrap_err();
        let report = report(&diags);
        assert!(
            !report
                .lines()
                .any(|l| l.starts_with("2026-01-01T00:00:00Z ERROR forged")),
            "{report}"
        );
        assert!(
            report.contains("\\x0a2026-01-01T00:00:00Z ERROR forged"),
            "{report}"
        );
        assert!(report.len() < 8 * 1024, "{} bytes", report.len());
        assert!(report.contains("bytes cut]"), "{report}");
    }
}
