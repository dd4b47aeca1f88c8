//! The agent's start-up check: every directory the config has it write can be written, or made
//! where it does not exist yet, from where the agent runs. In drover.service a directory the unit
//! does not name is read-only, and the agent would otherwise fail every pass on it; it stops at
//! once instead (exit status 2, as for a bad config), naming the drop-in that fixes it.

use std::path::Path;

use rustix::fs::{Access, AtFlags, CWD};

use super::SandboxError;
use crate::config::Config;

/// Whether the agent can write each of `config`'s directories ([`super::writable`]): for one
/// that does not exist yet, its nearest existing ancestor, where the agent would make it.
pub fn check(config: &Config) -> Result<(), SandboxError> {
    for w in super::writable(config) {
        let probe = nearest_existing(&w.dir);
        // The effective ids, as the agent's writes will use; EROFS whoever asks.
        let Err(e) = rustix::fs::accessat(CWD, probe, Access::WRITE_OK, AtFlags::EACCESS) else {
            continue;
        };
        return Err(if e == rustix::io::Errno::ROFS {
            SandboxError::ReadOnly {
                key: w.key,
                path: w.path,
                probe: probe.to_owned(),
            }
        } else {
            SandboxError::NotWritable {
                key: w.key,
                path: w.path,
                probe: probe.to_owned(),
                error: std::io::Error::from(e).to_string(),
            }
        });
    }
    Ok(())
}

pub(super) fn nearest_existing(dir: &Path) -> &Path {
    (dir.ancestors())
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"))
}
