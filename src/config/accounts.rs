//! Turning account names from the config into numeric credentials, and refusing the
//! ones a tenant must never get (invariant 4: never 0, never outside `uid_range`).

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

/// The credentials a tenant's processes run with, checked against `uid_range`.
/// The range applies to the uid, the primary gid and every supplementary group, so a
/// tenant account that happens to be in `shadow`, `disk` or `sudo` is refused instead
/// of quietly handing those rights to the tenant's code.
pub fn resolve_tenant(tenant: &Tenant, (lo, hi): (u32, u32)) -> Result<Credentials, String> {
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
    let in_range = |id: u32| id != 0 && (lo..=hi).contains(&id);
    if !in_range(creds.uid) {
        return Err(format!(
            "user `{}` has uid {}, outside server.uid_range [{lo}, {hi}] (uid 0 is always refused)",
            tenant.user, creds.uid
        ));
    }
    if let Some(bad) = std::iter::once(creds.gid)
        .chain(creds.groups.iter().copied())
        .find(|&g| !in_range(g))
    {
        return Err(format!(
            "user `{}` would run with gid {bad}, outside server.uid_range [{lo}, {hi}] (gid 0 is always refused)",
            tenant.user
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
    fn unknown_users_are_named() {
        let err = resolve_user("no-such-user-condo-test").unwrap_err();
        assert!(err.contains("no-such-user-condo-test"), "{err}");
    }
}
