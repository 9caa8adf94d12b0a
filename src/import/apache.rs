//! Apache vhost configs → condo sites. Hand-written: no maintained crate parses
//! Apache's config grammar (directives, `<Section>` blocks, quoting, `\` line
//! continuations, Include).

use std::path::{Path, PathBuf};

use super::{Note, Vhost};

/// One directive with its arguments and where it was.
#[derive(Debug, Clone)]
struct Directive {
    name: String,
    args: Vec<String>,
    file: PathBuf,
    line: usize,
}

/// Split a line into words; double quotes group, backslash escapes inside quotes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut has = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                has = true;
            }
            '\\' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            c if c.is_whitespace() && !quoted => {
                if has || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => cur.push(c),
        }
    }
    if has || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Read `path` (and what it includes) into a flat list of directives; section
/// openings are directives named `<Name`, closings `</Name`.
fn read(path: &Path, depth: usize, out: &mut Vec<Directive>, notes: &mut Vec<Note>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            notes.push(Note::new(path, 0, "", format!("cannot read: {e}")));
            return;
        }
    };
    let mut pending = String::new();
    let mut first_line = 0;
    for (i, raw) in text.lines().enumerate() {
        if pending.is_empty() {
            first_line = i + 1;
        }
        if let Some(cont) = raw.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(raw);
        let line = std::mem::take(&mut pending);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut w = words(line.trim_end_matches('>'));
        if w.is_empty() {
            continue;
        }
        let name = w.remove(0);
        if (name.eq_ignore_ascii_case("Include") || name.eq_ignore_ascii_case("IncludeOptional"))
            && depth < 8
        {
            for pattern in &w {
                let full = if Path::new(pattern).is_absolute() {
                    PathBuf::from(pattern)
                } else {
                    path.parent().unwrap_or(Path::new(".")).join(pattern)
                };
                let mut found: Vec<PathBuf> = glob::glob(&full.to_string_lossy())
                    .map(|g| g.flatten().collect())
                    .unwrap_or_default();
                found.sort();
                if found.is_empty() && name.eq_ignore_ascii_case("Include") {
                    notes.push(Note::new(
                        path,
                        first_line,
                        &name,
                        format!("{} not found", full.display()),
                    ));
                }
                for f in found {
                    read(&f, depth + 1, out, notes);
                }
            }
            continue;
        }
        out.push(Directive {
            name,
            args: w,
            file: path.to_path_buf(),
            line: first_line,
        });
    }
}

fn is_static_user(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// The vhosts in `files`, and what could not be translated.
pub fn parse(files: &[PathBuf], notes: &mut Vec<Note>) -> Vec<Vhost> {
    let mut directives = Vec::new();
    for f in files {
        read(f, 0, &mut directives, notes);
    }
    let mut vhosts = Vec::new();
    let mut current: Option<Vhost> = None;
    // Open sections inside the vhost, with what they match (FilesMatch pattern).
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for d in directives {
        let lower = d.name.to_ascii_lowercase();
        let note = |notes: &mut Vec<Note>, why: &str| {
            notes.push(Note::new(&d.file, d.line, &d.name, why.to_string()));
        };
        if lower == "<virtualhost" {
            current = Some(Vhost {
                file: d.file.clone(),
                line: d.line,
                ..Vhost::default()
            });
            sections.clear();
            continue;
        }
        if lower == "</virtualhost" {
            if let Some(v) = current.take() {
                vhosts.push(v);
            }
            continue;
        }
        let Some(v) = current.as_mut() else {
            // Server-wide settings: condo's own [server] replaces them.
            continue;
        };
        if let Some(section) = lower.strip_prefix('<') {
            if let Some(closed) = section.strip_prefix('/') {
                if sections.last().is_some_and(|(s, _)| s == closed) {
                    sections.pop();
                }
            } else {
                sections.push((section.to_string(), d.args.clone()));
            }
            continue;
        }
        let in_php_files = sections.iter().any(|(s, args)| {
            (s == "filesmatch" || s == "files") && args.iter().any(|a| a.contains("php"))
        });
        match lower.as_str() {
            "servername" => v.name = d.args.first().cloned(),
            "serveralias" => v.aliases.extend(d.args.iter().cloned()),
            "documentroot" => v.root = d.args.first().map(PathBuf::from),
            "assignuserid" | "suexecusergroup" => {
                v.user = d.args.first().cloned();
                v.group = d.args.get(1).cloned();
            }
            "assignuseridexpr" => match d.args.first() {
                Some(u) if is_static_user(u) => v.user = Some(u.clone()),
                _ => note(
                    notes,
                    "a user computed per request has no condo equivalent: a site belongs to one tenant",
                ),
            },
            "assigngroupidexpr" => match d.args.first() {
                Some(g) if is_static_user(g) => v.group = Some(g.clone()),
                _ => note(
                    notes,
                    "a group computed per request has no condo equivalent",
                ),
            },
            "maxclientsvhost" => v.max_clients = d.args.first().and_then(|n| n.parse().ok()),
            "nicevalue" => v.nice = d.args.first().and_then(|n| n.parse().ok()),
            "directoryindex" => v.index = Some(d.args.clone()),
            "addhandler" | "sethandler" | "addtype" => {
                let handler = d
                    .args
                    .first()
                    .map(|a| a.to_ascii_lowercase())
                    .unwrap_or_default();
                if handler.contains("x-httpd-php") || handler.contains("php-script") {
                    v.php = Some(super::Php::Module);
                } else if let Some(socket) = handler.strip_prefix("proxy:unix:") {
                    let socket = socket.split('|').next().unwrap_or_default();
                    v.php = Some(super::Php::Fpm(PathBuf::from(socket)));
                } else if handler == "cgi-script" {
                    v.cgi = true;
                } else if in_php_files && handler.starts_with("proxy:fcgi://") {
                    v.php = Some(super::Php::FpmTcp(handler.clone()));
                } else {
                    note(notes, "this handler has no condo equivalent");
                }
            }
            "fcgiwrapper" | "fcgidwrapper" => {
                v.php = Some(super::Php::Wrapper(
                    d.args.first().cloned().unwrap_or_default(),
                ))
            }
            "action" if d.args.first().is_some_and(|a| a.contains("php")) => {
                v.php = Some(super::Php::Wrapper(
                    d.args.get(1).cloned().unwrap_or_default(),
                ));
            }
            "php_admin_value" | "php_value" | "php_admin_flag" | "php_flag" => {
                if d.args.len() >= 2 {
                    v.php_settings.push((d.args[0].clone(), d.args[1].clone()));
                }
                v.php.get_or_insert(super::Php::Module);
            }
            "setenv" if d.args.len() >= 2 => v.env.push((d.args[0].clone(), d.args[1].clone())),
            "sslcertificatefile" => v.tls_cert = d.args.first().map(PathBuf::from),
            "sslcertificatekeyfile" => v.tls_key = d.args.first().map(PathBuf::from),
            "sslengine" => {}
            "errorlog" | "customlog" | "transferlog" | "logformat" | "loglevel" => {
                note(
                    notes,
                    "condo writes each site's access and error log in log_dir",
                );
            }
            "serveradmin" | "options" | "allowoverride" | "require" | "order" | "allow"
            | "deny" => {
                // Access control and options of the old server: condo serves the
                // root as the tenant, with no .htaccess.
                if !matches!(lower.as_str(), "serveradmin") {
                    note(
                        notes,
                        "per-directory access rules and .htaccess are not read by condo",
                    );
                }
            }
            _ => note(notes, "no condo equivalent"),
        }
    }
    if let Some(v) = current {
        notes.push(Note::new(
            &v.file,
            v.line,
            "<VirtualHost",
            "never closed; taken as it is".into(),
        ));
        vhosts.push(v);
    }
    vhosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_group_quotes_and_continuations_join() {
        assert_eq!(
            words(r#"SetHandler "proxy:unix:/run/php/a.sock|fcgi://localhost" x"#),
            vec![
                "SetHandler",
                "proxy:unix:/run/php/a.sock|fcgi://localhost",
                "x"
            ]
        );
        assert_eq!(words(r#"SetEnv A "" B"#), vec!["SetEnv", "A", "", "B"]);
    }
}
