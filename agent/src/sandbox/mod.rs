//! drover.service's sandbox and the config's paths. The unit is `ProtectSystem=strict`: the agent
//! can write only the directories the unit names, and the shipped unit names the defaults
//! (`/opt/app`, made by a `+` `ExecStartPre=`, and `/var/lib/drover` through `StateDirectory=`).
//! [`drop_in`] renders the drop-in ([`DROP_IN_PATH`]) that names the config's own release root,
//! state directory and environment file's directory instead; `drover user-data` writes it and
//! `drover sandbox-paths` prints it. [`check`] is the agent's start-up check that it can write
//! them, whatever unit it runs in.
//!
//! A path goes into the drop-in as it is or not at all: one that systemd would read as quoting,
//! a specifier (`%`) or a variable (`$`), or that the sandbox hides or would open up, is refused
//! with the key that set it.

use std::path::{Path, PathBuf};

use crate::config::Config;

mod check;
pub use check::check;

/// Where the drop-in goes: beside the unit, whether the unit is the package's or cloud-init's.
pub const DROP_IN_PATH: &str = "/etc/systemd/system/drover.service.d/paths.conf";

/// The state directory that the shipped unit's `StateDirectory=drover` makes and opens.
pub const UNIT_STATE_DIR: &str = "/var/lib/drover";

/// The commands that write the drop-in for the config in place, as the errors and docs say them.
pub const WRITE_DROP_IN: &str = "mkdir -p /etc/systemd/system/drover.service.d && \
     drover sandbox-paths > /etc/systemd/system/drover.service.d/paths.conf && \
     systemctl daemon-reload && systemctl restart drover";

/// Trees the unit hides from the agent, and the setting that hides them: a directory there
/// would be written somewhere the app never sees, or not at all.
const HIDDEN: &[(&str, &str)] = &[
    ("/home", "ProtectHome=yes"),
    ("/root", "ProtectHome=yes"),
    ("/run/user", "ProtectHome=yes"),
    ("/tmp", "PrivateTmp=yes"),
    ("/var/tmp", "PrivateTmp=yes"),
    ("/dev", "PrivateDevices=yes"),
    ("/proc", "ProtectProc="),
    ("/sys", "ProtectKernelTunables=yes"),
];

/// What must stay read-only to the agent: its config, its credentials, its unit and its binary.
/// A writable directory at, above or under one of these would let the agent rewrite its own
/// sandbox (`/etc/systemd/system/drover.service.d`) or binary (`/usr/local/bin`).
const PROTECTED: &[&str] = &[
    "/etc/drover",
    "/etc/default",
    "/etc/systemd",
    "/usr",
    "/lib/systemd",
];

/// And what the agent must not write in at all: units and their drop-ins
/// (`/etc/systemd/system/drover.service.d`), credentials, its config and drop-ins, and the
/// directories its binary is installed in.
const NOT_UNDER: &[&str] = &[
    "/etc/drover",
    "/etc/default",
    "/etc/systemd",
    "/lib/systemd",
    "/usr/lib/systemd",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/bin",
    "/sbin",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SandboxError {
    #[error("{key} {path:?} is not an absolute, normalized path")]
    NotNormalized { key: &'static str, path: PathBuf },
    #[error(
        "{key} {path:?}: {character:?} cannot go into drover.service's drop-in as it is (systemd \
         reads spaces, quotes, backslashes, % and $ itself); use a path of ASCII letters, digits \
         and / . _ - + @ : , = ~"
    )]
    Character {
        key: &'static str,
        path: PathBuf,
        character: char,
    },
    #[error(
        "{key} {path}: drover.service hides {tree} from the agent ({setting}); use a directory \
         elsewhere, such as under /srv or /var/lib"
    )]
    Hidden {
        key: &'static str,
        path: PathBuf,
        tree: &'static str,
        setting: &'static str,
    },
    #[error(
        "{key} {path}: drover.service would make {dir} writable to the agent, which is, holds \
         or is under {protected}; give it a directory of its own"
    )]
    Exposes {
        key: &'static str,
        path: PathBuf,
        dir: PathBuf,
        protected: &'static str,
    },
    #[error(
        "{key} {path}: {probe} is read-only to the agent. drover.service can write only the \
         directories it names (ProtectSystem=strict), and this config's are not among them: \
         write the drop-in for it and restart: {WRITE_DROP_IN}"
    )]
    ReadOnly {
        key: &'static str,
        path: PathBuf,
        probe: PathBuf,
    },
    #[error("{key} {path}: the agent cannot write {probe}: {error}")]
    NotWritable {
        key: &'static str,
        path: PathBuf,
        probe: PathBuf,
        error: String,
    },
}

/// A directory the agent writes, and the key of the config that puts it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writable {
    pub key: &'static str,
    /// The config's path: the directory itself, or (`environment.file`) the file in it.
    pub path: PathBuf,
    pub dir: PathBuf,
    /// Its mode when the unit makes it.
    pub mode: u32,
}

/// The directories `config` has the agent write: the release root, the state directory and,
/// with `[environment]`, the environment file's directory (written by rename, beside its good
/// copy).
pub fn writable(config: &Config) -> Vec<Writable> {
    let dir = |key, path: &Path, mode| Writable {
        key,
        path: path.to_owned(),
        dir: path.to_owned(),
        mode,
    };
    let mut all = vec![
        dir("release.root", &config.release.root, 0o755),
        dir("agent.state_dir", &config.agent.state_dir, 0o700),
    ];
    if let Some(env) = &config.environment {
        all.push(Writable {
            key: "environment.file",
            path: env.file.clone(),
            dir: crate::fsutil::parent(&env.file).to_owned(),
            mode: 0o755,
        });
    }
    all
}

/// The drop-in for `config`: the directories it names are made before the agent starts (by a
/// `+` command, outside the sandbox, since their parents are read-only inside) and writable
/// inside. `source` names the config in the drop-in's comment.
pub fn drop_in(config: &Config, source: &Path) -> Result<String, SandboxError> {
    let all = writable(config);
    for w in &all {
        check_path(w)?;
    }
    let unit_state = Path::new(UNIT_STATE_DIR);
    let state_by_unit = config.agent.state_dir == unit_state;
    let mut made: Vec<&Writable> = Vec::new();
    for w in &all {
        let by_unit = state_by_unit && w.dir == unit_state;
        if !by_unit && !made.iter().any(|m| m.dir == w.dir) {
            made.push(w);
        }
    }
    // Parents first: `mkdir -p` of a child would make its parent with the child's mode.
    made.sort_by(|a, b| a.dir.cmp(&b.dir));
    // Writable already: under another directory opened here, or under the unit's state dir.
    let opened = |d: &Path| {
        (state_by_unit && d.starts_with(unit_state))
            || made.iter().any(|m| m.dir != d && d.starts_with(&m.dir))
    };
    let mut text = format!(
        "# drover.service's writable directories for {} (`drover sandbox-paths` prints it).\n\
         # ProtectSystem=strict leaves only these writable; each \"+\" mkdir makes one, outside the\n\
         # sandbox, before the agent starts. Print it again after changing [release] root,\n\
         # [agent] state_dir or [environment] file. \"-\": systemd applies ReadWritePaths= to the\n\
         # \"+\" commands too, before they have made the directories.\n\
         [Service]\n\
         ExecStartPre=\n",
        // A line break in the name would start a line of the unit.
        source.display().to_string().replace(char::is_control, "?")
    );
    for w in &made {
        text.push_str(&format!(
            "ExecStartPre=+/usr/bin/mkdir -p -m {:04o} {}\n",
            w.mode,
            w.dir.display()
        ));
    }
    if !state_by_unit {
        // /var/lib/drover would be made, and writable, for nothing.
        text.push_str("StateDirectory=\n");
    }
    let opened: Vec<String> = (made.iter())
        .filter(|w| !opened(&w.dir))
        .map(|w| format!("-{}", w.dir.display()))
        .collect();
    text.push_str("ReadWritePaths=\n");
    if !opened.is_empty() {
        text.push_str(&format!("ReadWritePaths={}\n", opened.join(" ")));
    }
    // Not made here (they are node_exporter's), writable if they exist: the unit's textfile
    // collector directories, which the reset above drops, and `[metrics] textfile`'s own.
    let mut collectors: Vec<PathBuf> = crate::metrics::SANDBOX_DIRS.map(PathBuf::from).to_vec();
    if let Some(file) = &config.metrics.textfile {
        let dir = crate::fsutil::parent(file).to_owned();
        check_path(&Writable {
            key: "metrics.textfile",
            path: file.clone(),
            dir: dir.clone(),
            mode: 0o755,
        })?;
        if !collectors.contains(&dir) {
            collectors.push(dir);
        }
    }
    let collectors: Vec<String> = (collectors.iter())
        .map(|d| format!("-{}", d.display()))
        .collect();
    text.push_str(&format!("ReadWritePaths={}\n", collectors.join(" ")));
    Ok(text)
}

/// Refuses what cannot go into the drop-in, or should not.
fn check_path(w: &Writable) -> Result<(), SandboxError> {
    let key = w.key;
    let path = &w.path;
    let normalized = path.is_absolute()
        && path.parent().is_some()
        && path.components().collect::<PathBuf>().as_os_str() == path.as_os_str()
        && !path
            .components()
            .any(|c| c == std::path::Component::ParentDir);
    if !normalized {
        return Err(SandboxError::NotNormalized {
            key,
            path: path.clone(),
        });
    }
    let text = path.to_string_lossy();
    let allowed = |c: char| c.is_ascii_alphanumeric() || "/._-+@:,=~".contains(c);
    if let Some(character) = text.chars().find(|c| !allowed(*c)) {
        return Err(SandboxError::Character {
            key,
            path: path.clone(),
            character,
        });
    }
    if let Some((tree, setting)) = HIDDEN.iter().find(|(t, _)| w.dir.starts_with(t)) {
        return Err(SandboxError::Hidden {
            key,
            path: path.clone(),
            tree,
            setting,
        });
    }
    let above = PROTECTED.iter().find(|p| Path::new(p).starts_with(&w.dir));
    let under = NOT_UNDER.iter().find(|p| w.dir.starts_with(p));
    if let Some(protected) = above.or(under) {
        return Err(SandboxError::Exposes {
            key,
            path: path.clone(),
            dir: w.dir.clone(),
            protected,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
