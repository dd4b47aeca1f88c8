//! `[release] owner`: the user (and group) the files of a release belong to, instead of root.
//!
//! Names are looked up in `/etc/passwd` and `/etc/group` directly, as `files` in nsswitch would:
//! the shipped binary is linked statically, and glibc's static `getpwnam` needs the shared NSS
//! modules at run time. Users from LDAP or SSSD can be given by number (`"1001:1001"`).
//! The lookup happens at each deploy, so a user that cloud-init creates after drover starts works.

use std::path::Path;

use crate::fsutil::{IoContext, PathError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Checks the form of `user[:group]` (names or numbers) at config time.
pub fn check_spec(spec: &str) -> Result<(), String> {
    let (user, group) = split(spec);
    for part in std::iter::once(user).chain(group) {
        let name_ok = !part.is_empty()
            && part.len() <= 32
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'))
            && !part.starts_with('-');
        if !name_ok {
            return Err(format!(
                "{spec:?} is not a user or user:group (names or numbers)"
            ));
        }
    }
    Ok(())
}

fn split(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    }
}

/// Resolves `user[:group]` against the text of `/etc/passwd` and `/etc/group`. Without a group,
/// the user's primary group.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Owner, String> {
    let (user, group_name) = split(spec);
    let entry = |text: &str, name: &str| -> Option<Vec<String>> {
        text.lines()
            .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
            .find(|f| f.len() >= 4 && f[0] == name)
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => {
            let f =
                entry(passwd, user).ok_or_else(|| format!("no user {user:?} in /etc/passwd"))?;
            let uid = f[2].parse().map_err(|_| format!("bad uid for {user:?}"))?;
            let gid = f[3].parse().map_err(|_| format!("bad gid for {user:?}"))?;
            (uid, Some(gid))
        }
    };
    let gid = match group_name {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let f = entry(group, g).ok_or_else(|| format!("no group {g:?} in /etc/group"))?;
                f[2].parse()
                    .map_err(|_| format!("bad gid for group {g:?}"))?
            }
        },
        None => primary.unwrap_or(uid),
    };
    Ok(Owner { uid, gid })
}

/// [`resolve`] against this machine's `/etc/passwd` and `/etc/group`.
pub fn lookup(spec: &str) -> Result<Owner, String> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("read {p}: {e}"));
    resolve(spec, &read("/etc/passwd")?, &read("/etc/group")?)
        .map_err(|e| format!("release.owner {spec:?}: {e}"))
}

/// Gives everything under `root` to `owner`, links themselves rather than their targets.
/// `root` itself stays ours: moving a directory into `releases/` (and out, to prune it) needs
/// write permission on the directory itself, which a root without CAP_DAC_OVERRIDE only has as
/// its owner. Returns how many entries changed hands.
pub fn chown_tree(root: &Path, owner: Owner) -> Result<u64, PathError> {
    let mut count = 0;
    walk(root, &mut |path, _| {
        if path != root {
            std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid)).at("chown", path)?;
            count += 1;
        }
        Ok(())
    })?;
    Ok(count)
}

/// Takes a tree back from its owner so that this process can delete it: every entry becomes
/// ours and every directory `u+rwx`. Needs CAP_CHOWN for entries owned by someone else, which is
/// exactly what a release with `[release] owner` has.
pub fn reclaim_tree(root: &Path) -> Result<(), PathError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    #[allow(unsafe_code)]
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    walk(root, &mut |path, meta| {
        if meta.uid() != uid || meta.gid() != gid {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).at("chown", path)?;
        }
        if meta.is_dir() && meta.mode() & 0o700 != 0o700 {
            let mode = (meta.mode() & 0o7777) | 0o700;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .at("chmod", path)?;
        }
        Ok(())
    })
}

/// Visits `root`, then (for a directory, before its children are read) everything below it,
/// without following symlinks.
fn walk(
    root: &Path,
    visit: &mut dyn FnMut(&Path, &std::fs::Metadata) -> Result<(), PathError>,
) -> Result<(), PathError> {
    let meta = std::fs::symlink_metadata(root).at("stat", root)?;
    visit(root, &meta)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(root).at("list", root)? {
            let entry = entry.at("list", root)?;
            walk(&entry.path(), visit)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\napp:x:1001:1002::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1002:\nweb:x:33:app\n";

    #[test]
    fn names_and_numbers_resolve() {
        let r = |s| resolve(s, PASSWD, GROUP);
        assert_eq!(
            r("app"),
            Ok(Owner {
                uid: 1001,
                gid: 1002
            })
        );
        assert_eq!(r("app:web"), Ok(Owner { uid: 1001, gid: 33 }));
        assert_eq!(
            r("1500"),
            Ok(Owner {
                uid: 1500,
                gid: 1500
            })
        );
        assert_eq!(r("1500:33"), Ok(Owner { uid: 1500, gid: 33 }));
        assert_eq!(r("app:7"), Ok(Owner { uid: 1001, gid: 7 }));
        assert!(r("nobody").unwrap_err().contains("no user \"nobody\""));
        assert!(r("app:nogroup").unwrap_err().contains("no group"));
    }

    #[test]
    fn spec_form_is_checked() {
        assert!(check_spec("app").is_ok());
        assert!(check_spec("app:www-data").is_ok());
        assert!(check_spec("1001:1001").is_ok());
        for bad in ["", ":", "app:", "a b", "-x", "app:g:h", "root/x"] {
            assert!(check_spec(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reclaim_makes_a_locked_tree_removable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tree.join("a/l")).unwrap();
        std::fs::set_permissions(tree.join("a"), std::fs::Permissions::from_mode(0o500)).unwrap();
        reclaim_tree(&tree).unwrap();
        std::fs::remove_dir_all(&tree).unwrap();
        // The link was not followed: /etc/passwd kept its mode.
        assert!(
            std::fs::metadata("/etc/passwd")
                .unwrap()
                .permissions()
                .mode()
                & 0o777
                != 0o700
        );
    }
}
