//! Room first: before a byte is downloaded, the release root's file system must have space for
//! what is left to download and for the unpacked release, or the fetch fails at once with an
//! error that names the path, the space needed and the space free (the machine's fault: it is
//! retried, and an operator who frees space sees the next pass go through).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::download::FetchError;
use crate::config::Artifact;
use crate::fsutil::IoContext;
use crate::releases::Partial;
use crate::store::ObjectInfo;

/// What the download and the unpack of the object `info` describes need on `root`'s file
/// system, given what `partial` holds of it already.
pub fn check(
    root: &Path,
    key: &str,
    info: &ObjectInfo,
    partial: &Partial,
    artifact: &Artifact,
) -> Result<(), FetchError> {
    let held = std::fs::symlink_metadata(&partial.data)
        .ok()
        .filter(|m| m.is_file())
        .map_or(0, |m| m.blocks() * 512);
    let need = needed(info, held, artifact.max_unpacked_size);
    let stat = rustix::fs::statvfs(root)
        .map_err(std::io::Error::from)
        .at("statvfs", root)?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if need.total() > free {
        return Err(FetchError::NoSpace {
            path: root.to_owned(),
            key: key.to_owned(),
            needed: need.total(),
            download: need.download,
            unpacked: need.unpacked,
            free,
        });
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
struct Need {
    download: u64,
    unpacked: u64,
}

impl Need {
    fn total(&self) -> u64 {
        self.download.saturating_add(self.unpacked)
    }
}

/// The rest of the download (what a partial download already holds is taken), and the unpacked
/// size: the one `drover publish` announced, no more than `max_unpacked_size` (the unpack stops
/// there anyway); without one, the artifact's own size, a lower bound (a compressed archive
/// does not unpack smaller than itself by much), not the cap, which would ask every instance
/// for 8 GiB by default.
fn needed(info: &ObjectInfo, held: u64, max_unpacked_size: u64) -> Need {
    Need {
        download: info.len.saturating_sub(held),
        unpacked: info
            .unpacked_size
            .map_or(info.len, |n| n.min(max_unpacked_size)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(len: u64, unpacked_size: Option<u64>) -> ObjectInfo {
        ObjectInfo {
            len,
            etag: "\"e\"".into(),
            unpacked_size,
        }
    }

    #[test]
    fn what_is_needed() {
        assert_eq!(
            needed(&info(100, Some(300)), 0, 1000),
            Need {
                download: 100,
                unpacked: 300
            }
        );
        assert_eq!(needed(&info(100, Some(3000)), 40, 1000).total(), 60 + 1000);
        assert_eq!(needed(&info(100, None), 0, 1000).total(), 200);
        assert_eq!(needed(&info(100, None), 400, 1000).total(), 100);
    }
}
