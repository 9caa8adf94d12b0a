//! Turning account names from the config into numeric credentials, and refusing the
//! ones a tenant must never get (invariant 4: never 0, never outside `uid_range`).

use std::collections::HashMap;
use std::path::PathBuf;

use nix::unistd::{Group, User};
use serde::{Deserialize, Serialize};

use super::Tenant;

/// The identity a process is started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups as initgroups(3) would set them (including `gid`).
    pub groups: Vec<u32>,
    /// The account's home directory (the tenant's own under Landlock and in a cage).
    pub home: std::path::PathBuf,
}

/// Look a user up in the system's account database.
pub fn resolve_user(name: &str) -> Result<Credentials, String> {
    let user = User::from_name(name)
        .map_err(|e| format!("cannot look up user `{name}`: {e}"))?
        .ok_or_else(|| format!("no such user `{name}`"))?;
    let cname = std::ffi::CString::new(name).map_err(|_| format!("bad user name `{name}`"))?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid)
        .map_err(|e| format!("cannot list the groups of `{name}`: {e}"))?;
    Ok(Credentials {
        user: name.to_string(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: groups.into_iter().map(|g| g.as_raw()).collect(),
        home: user.dir,
    })
}

/// The local account files, read once so that resolving every tenant of a large host is
/// linear: getpwnam(3) and getgrouplist(3) scan /etc/passwd and /etc/group on every
/// call, which made `condo check` of 10,000 tenants take 7.6 s, growing with the square
/// (issue 23). An account these files do not hold (LDAP, sssd) is looked up through NSS
/// as before. The supplementary groups of a local account are the groups /etc/group
/// lists it in: exactly what the tenant's processes get (setgroups), so the
/// `uid_range` check below checks what is applied.
#[derive(Debug, Default)]
pub struct Directory {
    /// name -> (uid, primary gid, home)
    users: HashMap<String, (u32, u32, PathBuf)>,
    group_ids: HashMap<String, u32>,
    /// user name -> gids of the groups that list it as a member
    member_of: HashMap<String, Vec<u32>>,
}

impl Directory {
    /// Read /etc/passwd and /etc/group; a file that cannot be read leaves every lookup
    /// to NSS.
    pub fn load() -> Self {
        let mut dir = Self::default();
        if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
            for line in passwd.lines() {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() < 7 || f[0].starts_with(['+', '-']) {
                    continue;
                }
                if let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse()) {
                    // The first entry of a name wins, as with getpwnam.
                    dir.users
                        .entry(f[0].to_string())
                        .or_insert((uid, gid, PathBuf::from(f[5])));
                }
            }
        }
        if let Ok(group) = std::fs::read_to_string("/etc/group") {
            for line in group.lines() {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() < 4 || f[0].starts_with(['+', '-']) {
                    continue;
                }
                let Ok(gid) = f[2].parse::<u32>() else {
                    continue;
                };
                dir.group_ids.entry(f[0].to_string()).or_insert(gid);
                for member in f[3].split(',').filter(|m| !m.is_empty()) {
                    dir.member_of
                        .entry(member.to_string())
                        .or_default()
                        .push(gid);
                }
            }
        }
        dir
    }

    pub fn user(&self, name: &str) -> Result<Credentials, String> {
        let Some((uid, gid, home)) = self.users.get(name) else {
            return resolve_user(name);
        };
        let mut groups = vec![*gid];
        for &g in self.member_of.get(name).into_iter().flatten() {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        Ok(Credentials {
            user: name.to_string(),
            uid: *uid,
            gid: *gid,
            groups,
            home: home.clone(),
        })
    }

    fn group(&self, name: &str) -> Result<u32, String> {
        if let Some(&gid) = self.group_ids.get(name) {
            return Ok(gid);
        }
        Ok(Group::from_name(name)
            .map_err(|e| format!("cannot look up group `{name}`: {e}"))?
            .ok_or_else(|| format!("no such group `{name}`"))?
            .gid
            .as_raw())
    }

    /// [`resolve_tenant`] against these files.
    pub fn resolve_tenant(
        &self,
        tenant: &Tenant,
        range: (u32, u32),
    ) -> Result<Credentials, String> {
        let mut creds = self.user(&tenant.user)?;
        if let Some(group) = &tenant.group {
            creds.gid = self.group(group)?;
            if !creds.groups.contains(&creds.gid) {
                creds.groups.push(creds.gid);
            }
        }
        check_range(&tenant.user, creds, range)
    }
}

/// The credentials a tenant's processes run with, checked against `uid_range`.
/// The range applies to the uid, the primary gid and every supplementary group, so a
/// tenant account that happens to be in `shadow`, `disk` or `sudo` is refused instead
/// of quietly handing those rights to the tenant's code.
pub fn resolve_tenant(tenant: &Tenant, range: (u32, u32)) -> Result<Credentials, String> {
    let mut creds = resolve_user(&tenant.user)?;
    if let Some(group) = &tenant.group {
        let g = Group::from_name(group)
            .map_err(|e| format!("cannot look up group `{group}`: {e}"))?
            .ok_or_else(|| format!("no such group `{group}`"))?;
        creds.gid = g.gid.as_raw();
        if !creds.groups.contains(&creds.gid) {
            creds.groups.push(creds.gid);
        }
    }
    check_range(&tenant.user, creds, range)
}

fn check_range(
    user: &str,
    creds: Credentials,
    (lo, hi): (u32, u32),
) -> Result<Credentials, String> {
    let in_range = |id: u32| id != 0 && (lo..=hi).contains(&id);
    if !in_range(creds.uid) {
        return Err(format!(
            "user `{user}` has uid {}, outside server.uid_range [{lo}, {hi}] (uid 0 is always refused)",
            creds.uid
        ));
    }
    if let Some(bad) = std::iter::once(creds.gid)
        .chain(creds.groups.iter().copied())
        .find(|&g| !in_range(g))
    {
        return Err(format!(
            "user `{user}` would run with gid {bad}, outside server.uid_range [{lo}, {hi}] (gid 0 is always refused)"
        ));
    }
    Ok(creds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_never_a_tenant() {
        let t = Tenant {
            name: "r".into(),
            user: "root".into(),
            group: None,
            pool: Default::default(),
            limits: Default::default(),
            isolation: Default::default(),
            user_config: None,
            user_config_locked: Vec::new(),
        };
        let err = resolve_tenant(&t, (0, 60000)).unwrap_err();
        assert!(err.contains("uid 0"), "{err}");
    }

    #[test]
    fn uids_outside_the_range_are_refused() {
        let t = Tenant {
            name: "n".into(),
            user: "nobody".into(),
            group: None,
            pool: Default::default(),
            limits: Default::default(),
            isolation: Default::default(),
            user_config: None,
            user_config_locked: Vec::new(),
        };
        let creds = resolve_user("nobody").expect("Debian has `nobody`");
        let err = resolve_tenant(&t, (1000, creds.uid - 1)).unwrap_err();
        assert!(err.contains("outside server.uid_range"), "{err}");
        assert!(resolve_tenant(&t, (1000, creds.uid.max(creds.gid))).is_ok());
    }

    #[test]
    fn the_files_give_what_nss_gives_for_local_accounts() {
        let dir = Directory::load();
        for name in ["root", "nobody", "daemon"] {
            let Ok(nss) = resolve_user(name) else {
                continue;
            };
            let mut files = dir.user(name).unwrap();
            let mut nss_groups = nss.groups.clone();
            nss_groups.sort_unstable();
            files.groups.sort_unstable();
            assert_eq!(files.groups, nss_groups, "{name}");
            assert_eq!(
                (files.uid, files.gid, &files.home),
                (nss.uid, nss.gid, &nss.home)
            );
        }
        // Not in the files: through NSS, with its error.
        assert!(dir.user("no-such-user-condo-test").is_err());
    }

    #[test]
    fn unknown_users_are_named() {
        let err = resolve_user("no-such-user-condo-test").unwrap_err();
        assert!(err.contains("no-such-user-condo-test"), "{err}");
    }
}
