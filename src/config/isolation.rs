//! How far a tenant's processes are fenced in beyond their own uid and cgroup.
//! Set in `[defaults]`, overridden in `[tenant.NAME]`; only the admin's config sets it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Diagnostic, Source};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IsolationMode {
    /// Only the tenant's uid, groups, cgroup and rlimits (what mpm-itk gives): for a
    /// site that breaks under the filters below, chosen knowingly.
    Uid,
    /// Uid and cgroup, plus no_new_privs, a seccomp deny-list and Landlock (the
    /// tenant's own paths read-write, system paths read-only, nothing else; abstract
    /// unix sockets and signals scoped to the tenant).
    #[default]
    Standard,
    /// Standard, plus private mount, IPC and UTS namespaces: own /tmp, /var/tmp and
    /// /dev/shm, /home showing only the tenant's own home, a /proc showing only the
    /// tenant's own processes, and SysV IPC of its own.
    Cage,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    pub mode: IsolationMode,
    /// More paths the tenant may read (and execute) under Landlock, e.g. a shared
    /// library of PHP code.
    pub allow_read: Vec<PathBuf>,
    /// More paths the tenant may change under Landlock.
    pub allow_write: Vec<PathBuf>,
}

/// The isolation keys as written.
#[derive(Debug, Default, Clone, Deserialize)]
pub(super) struct IsolationKeys {
    pub isolation: Option<String>,
    pub allow_read: Option<Vec<PathBuf>>,
    pub allow_write: Option<Vec<PathBuf>>,
}

impl Isolation {
    pub(super) fn apply(
        base: &Isolation,
        keys: &IsolationKeys,
        source: &Source,
        table: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Isolation {
        let mut isolation = base.clone();
        if let Some(mode) = &keys.isolation {
            match mode.as_str() {
                "uid" => isolation.mode = IsolationMode::Uid,
                "standard" => isolation.mode = IsolationMode::Standard,
                "cage" => isolation.mode = IsolationMode::Cage,
                other => diags.push(source.error(
                    &format!("{table}.isolation"),
                    format!("`{other}` is not an isolation; use \"standard\", \"cage\" or \"uid\""),
                )),
            }
        }
        for (key, given, target) in [
            ("allow_read", &keys.allow_read, &mut isolation.allow_read),
            ("allow_write", &keys.allow_write, &mut isolation.allow_write),
        ] {
            let Some(paths) = given else { continue };
            match paths.iter().find(|p| !p.is_absolute()) {
                Some(p) => diags.push(source.error(
                    &format!("{table}.{key}"),
                    format!("`{}` is not an absolute path", p.display()),
                )),
                None => *target = paths.clone(),
            }
        }
        isolation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str) -> (Isolation, Vec<Diagnostic>) {
        let source = Source::from_text(std::path::Path::new("t.toml"), text.to_string());
        let keys: IsolationKeys = toml::from_str(text).unwrap();
        let mut diags = Vec::new();
        let isolation = Isolation::apply(
            &Isolation::default(),
            &keys,
            &source,
            "tenant.a",
            &mut diags,
        );
        (isolation, diags)
    }

    #[test]
    fn standard_by_default_and_each_mode_by_name() {
        assert_eq!(apply("").0.mode, IsolationMode::Standard);
        assert_eq!(apply("isolation = \"cage\"").0.mode, IsolationMode::Cage);
        assert_eq!(apply("isolation = \"uid\"").0.mode, IsolationMode::Uid);
    }

    #[test]
    fn unknown_mode_and_relative_paths_are_named() {
        let (i, diags) = apply("isolation = \"jail\"\nallow_read = [\"lib/php\"]\n");
        assert_eq!(i.mode, IsolationMode::Standard);
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        assert!(text[0].contains("tenant.a.isolation") && text[0].contains("jail"));
        assert!(text[1].contains("allow_read") && text[1].contains("lib/php"));
    }
}
