//! Attack matrix, "root never follows a path a tenant can change" (issue 15, item 4):
//! `condo import --out DIR` runs as root; a tenant who made DIR first (the README used
//! to say /tmp/condo-import) must not get root to write through its symlinks, nor get
//! site files written into a directory it controls.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// A path directly in /tmp (sticky, world-writable: where the attack happens),
/// removed with everything in it on drop.
struct TmpPath(PathBuf);

impl TmpPath {
    fn new(what: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        Self(PathBuf::from(format!(
            "/tmp/condo-import-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        )))
    }
}

impl Drop for TmpPath {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.0).is_ok_and(|m| m.is_symlink() || m.is_file()) {
            let _ = std::fs::remove_file(&self.0);
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Run `sh -c script` as `user` (its uid and gid, no other groups).
fn as_user(user: &TestUser, script: &str) {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--clear-groups")
        .args(["sh", "-c", script])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("setpriv");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A vhost whose user is `user`, so the import writes tenants.toml and
/// sites/<user>.toml.
fn vhost(dir: &Path, user: &TestUser) -> PathBuf {
    let path = dir.join("vhost.conf");
    std::fs::write(
        &path,
        format!(
            "<VirtualHost *:80>\n    ServerName v.example\n    DocumentRoot {}/www\n    AssignUserID {u} {u}\n</VirtualHost>\n",
            dir.display(),
            u = user.name
        ),
    )
    .unwrap();
    path
}

fn import(vhost: &Path, out: &Path) -> Output {
    Command::new(CONDO)
        .args(["import", "apache"])
        .arg(vhost)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// A root-owned file and directory the attacker aims at.
struct Victim {
    _dir: tempfile::TempDir,
    file: PathBuf,
    dir: PathBuf,
}

impl Victim {
    fn new() -> Self {
        let dir = scratch();
        let file = dir.path().join("victim.conf");
        std::fs::write(&file, "root's own file\n").unwrap();
        let sub = dir.path().join("victim.d");
        std::fs::create_dir(&sub).unwrap();
        Self {
            file,
            dir: sub,
            _dir: dir,
        }
    }

    fn assert_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(&self.file).unwrap(),
            "root's own file\n",
            "root wrote through the tenant's symlink"
        );
        assert_eq!(
            std::fs::read_dir(&self.dir).unwrap().count(),
            0,
            "root wrote site files into the victim directory"
        );
    }
}

#[test]
fn import_out_refuses_a_tenants_directory_with_symlinks_and_writes_nothing_through_them() {
    if !require_root() {
        return;
    }
    let tenant = TestUser::create("m");
    let work = scratch();
    let vhost = vhost(work.path(), &tenant);
    let victim = Victim::new();
    // The tenant pre-creates the output directory with links named like the outputs.
    let out = TmpPath::new("evil");
    as_user(
        &tenant,
        &format!(
            "mkdir -m 0777 {o} && ln -s {f} {o}/tenants.toml && ln -s {d} {o}/sites",
            o = out.0.display(),
            f = victim.file.display(),
            d = victim.dir.display()
        ),
    );
    let result = import(&vhost, &out.0);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        !result.status.success(),
        "import accepted {}",
        out.0.display()
    );
    assert!(
        stderr.contains(&out.0.display().to_string()) && stderr.contains("owned by uid"),
        "the error names the directory and why: {stderr}"
    );
    victim.assert_untouched();
    assert!(
        std::fs::symlink_metadata(out.0.join("tenants.toml"))
            .unwrap()
            .is_symlink()
    );

    // The same directory made private (0755) but still the tenant's: refused too.
    as_user(&tenant, &format!("chmod 0755 {}", out.0.display()));
    let result = import(&vhost, &out.0);
    assert!(!result.status.success());
    victim.assert_untouched();

    // The output path itself a link to a root-owned directory: refused.
    let link = TmpPath::new("link");
    as_user(
        &tenant,
        &format!("ln -s {} {}", victim.dir.display(), link.0.display()),
    );
    let result = import(&vhost, &link.0);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        !result.status.success(),
        "import followed {}",
        link.0.display()
    );
    assert!(stderr.contains("symbolic link"), "{stderr}");
    victim.assert_untouched();
}

#[test]
fn import_out_refuses_a_root_directory_inside_one_a_tenant_can_change() {
    if !require_root() {
        return;
    }
    let tenant = TestUser::create("m");
    let work = scratch();
    let vhost = vhost(work.path(), &tenant);
    let parent = TmpPath::new("parent");
    as_user(&tenant, &format!("mkdir -m 0755 {}", parent.0.display()));
    // Root's own directory, but the tenant can rename it away and put its own there.
    let out = parent.0.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    let result = import(&vhost, &out);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        !result.status.success(),
        "import accepted {}",
        out.display()
    );
    assert!(
        stderr.contains(&parent.0.display().to_string()),
        "the error names the tenant's directory: {stderr}"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

#[test]
fn import_out_creates_a_fresh_directory_even_in_tmp_and_reuses_its_own() {
    if !require_root() {
        return;
    }
    let tenant = TestUser::create("m");
    let work = scratch();
    let vhost = vhost(work.path(), &tenant);
    for out in [TmpPath::new("fresh").0.clone(), work.path().join("out")] {
        let _cleanup = TmpPath(out.clone());
        for run in 0..2 {
            // The second run replaces the first run's files in root's own directory.
            let result = import(&vhost, &out);
            assert!(
                result.status.success(),
                "run {run} into {}: {}",
                out.display(),
                String::from_utf8_lossy(&result.stderr)
            );
        }
        let meta = std::fs::metadata(&out).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o755));
        let tenants = std::fs::read_to_string(out.join("tenants.toml")).unwrap();
        assert!(
            tenants.contains(&format!("[tenant.{}]", tenant.name)),
            "{tenants}"
        );
        let site = out.join(format!("sites/{}.toml", tenant.name));
        assert!(
            std::fs::read_to_string(&site)
                .unwrap()
                .contains("v.example")
        );
        assert_eq!(std::fs::metadata(&site).unwrap().mode() & 0o777, 0o644);
    }
}
