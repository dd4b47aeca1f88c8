//! `[release] owner`: the user (and group) the files of a release belong to, instead of root.
//!
//! Names are looked up in `/etc/passwd` and `/etc/group` directly, as `files` in nsswitch would:
//! the shipped binary is linked statically, and glibc's static `getpwnam` needs the shared NSS
//! modules at run time. Users from LDAP or SSSD can be given by number (`"1001:1001"`).
//! The lookup happens at each deploy, so a user that cloud-init creates after drover starts works.

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
}
