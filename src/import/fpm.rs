//! PHP-FPM pool files (INI: `[pool]` sections of `key = value`) → tenant settings.
//! Hand-written: the INI dialect is a few lines, and keys like `env[NAME]` need their
//! brackets kept.

use std::path::{Path, PathBuf};

use super::{Note, Pool};

pub fn parse(files: &[PathBuf], notes: &mut Vec<Note>) -> Vec<Pool> {
    let mut pools = Vec::new();
    for path in files {
        parse_file(path, &mut pools, notes);
    }
    pools
}

fn parse_file(path: &Path, pools: &mut Vec<Pool>, notes: &mut Vec<Note>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            notes.push(Note::new(path, 0, "", format!("cannot read: {e}")));
            return;
        }
    };
    let mut current: Option<Pool> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            pools.extend(current.take());
            if name == "global" {
                continue;
            }
            current = Some(Pool {
                name: name.to_string(),
                file: path.to_path_buf(),
                line: i + 1,
                ..Pool::default()
            });
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            notes.push(Note::new(path, i + 1, line, "not `key = value`".into()));
            continue;
        };
        let (key, value) = (key.trim(), value.trim().trim_matches('"').to_string());
        let Some(pool) = current.as_mut() else {
            continue; // [global]: the FPM daemon's own settings
        };
        let number = || value.parse::<u64>().ok();
        let note = |notes: &mut Vec<Note>, why: &str| {
            notes.push(Note::new(path, i + 1, key, why.to_string()));
        };
        if let Some(name) = key.strip_prefix("env[").and_then(|k| k.strip_suffix(']')) {
            pool.env.push((name.to_string(), value));
            continue;
        }
        if let Some(name) = key
            .strip_prefix("php_admin_value[")
            .or_else(|| key.strip_prefix("php_value["))
            .or_else(|| key.strip_prefix("php_admin_flag["))
            .or_else(|| key.strip_prefix("php_flag["))
            .and_then(|k| k.strip_suffix(']'))
        {
            pool.php_settings.push((name.to_string(), value));
            continue;
        }
        match key {
            "user" => pool.user = Some(value),
            "group" => pool.group = Some(value),
            "listen" => pool.listen = Some(value),
            "pm" => pool.pm = Some(value),
            "pm.max_children" => pool.max_children = number(),
            "pm.max_requests" => pool.max_requests = number(),
            "pm.process_idle_timeout" => pool.idle_timeout = Some(seconds(&value)),
            "request_terminate_timeout" => pool.request_timeout = Some(seconds(&value)),
            "rlimit_files" => pool.rlimit_files = number(),
            "pm.start_servers" | "pm.min_spare_servers" | "pm.max_spare_servers" => note(
                notes,
                "condo starts php-cgi on demand and keeps workers_min warm; spare-server counts have no equivalent",
            ),
            "listen.owner" | "listen.group" | "listen.mode" | "listen.allowed_clients" => {
                // The socket is condo's own, private to the tenant.
            }
            _ => note(notes, "no condo equivalent"),
        }
    }
    pools.extend(current);
}

/// FPM durations: a number with an optional s/m/h/d suffix; condo writes "Ns".
fn seconds(value: &str) -> String {
    let (n, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let n: u64 = n.parse().unwrap_or(0);
    let secs = match unit {
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => n,
    };
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_become_seconds() {
        assert_eq!(super::seconds("30"), "30s");
        assert_eq!(super::seconds("10s"), "10s");
        assert_eq!(super::seconds("5m"), "300s");
    }
}
