//! Entry names and link targets as text and on disk: the path checks of the unpacker.

use std::fs;
use std::path::{Path, PathBuf};

use super::{MAX_DEPTH, MAX_NAME, MAX_PATH};

/// Turns an entry name into a clean relative path (`a/b/c`), or `None` for the root itself.
pub fn normalize(raw: &[u8]) -> Result<Option<String>, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "name is not UTF-8".to_string())?;
    if text.starts_with('/') {
        return Err("absolute path".into());
    }
    if text.len() > MAX_PATH {
        return Err(format!("path longer than {MAX_PATH} bytes"));
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("path contains \"..\"".into()),
            p if p.len() > MAX_NAME => return Err(format!("name longer than {MAX_NAME} bytes")),
            p if p.contains('\0') => return Err("name contains a NUL byte".into()),
            p => parts.push(p),
        }
    }
    if parts.len() > MAX_DEPTH {
        return Err(format!("path deeper than {MAX_DEPTH} directory levels"));
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Whether a symlink at `name` with relative `target` stays inside the release, read as text.
pub(super) fn lexically_inside(name: &str, target: &str) -> bool {
    let mut depth = name.split('/').count() - 1;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

/// Follows the symlink at `name` through the unpacked tree, symlink by symlink, and fails if the
/// walk ever leaves `root`. The textual check above misses chains such as `a -> .` plus
/// `b -> a/..`; this walk, done once every entry is on disk, does not.
pub(super) fn resolve_inside(root: &Path, name: &str) -> Result<(), String> {
    let mut pending: Vec<String> = name.split('/').rev().map(str::to_owned).collect();
    let mut stack: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                if stack.pop().is_none() {
                    return Err("symlink resolves to a path outside the release".into());
                }
                continue;
            }
            _ => {}
        }
        let path: PathBuf = root.join(stack.join("/")).join(&part);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err("too many levels of symlinks".into());
                }
                let target = fs::read_link(&path).map_err(|e| e.to_string())?;
                let target = target.to_str().ok_or("link target is not UTF-8")?;
                if target.starts_with('/') {
                    return Err(format!("symlink chain reaches absolute path {target:?}"));
                }
                pending.extend(target.split('/').rev().map(str::to_owned));
            }
            _ => stack.push(part),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(normalize(b"./a//b/./c"), Ok(Some("a/b/c".into())));
        assert_eq!(normalize(b"./"), Ok(None));
        assert!(normalize(b"a/\xff").is_err());
        assert!(normalize(&[b'a'; 256]).is_err());
        assert!(normalize(b"/a").is_err());
        assert!(lexically_inside("a/b/l", "../c"));
        assert!(lexically_inside("a/l", ".."));
        assert!(!lexically_inside("a/l", "../.."));
        assert!(!lexically_inside("l", ".."));
    }
}
