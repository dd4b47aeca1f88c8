//! `/etc/drover/config.toml`: read, check every key, and turn it into validated [`Config`].
//!
//! Parsing happens in two layers (as zincati does): [`raw`] mirrors the file with serde and rejects
//! unknown keys; `sections.rs` applies defaults and checks values, one function per section,
//! naming the key at fault.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use layers::Layers;

pub const DEFAULT_PATH: &str = "/etc/drover/config.toml";
/// `[artifact] max_unpacked_size` when unset.
pub const DEFAULT_MAX_UNPACKED_SIZE: u64 = 8 << 30;
/// `[artifact] max_entries` when unset.
pub const DEFAULT_MAX_ENTRIES: u64 = 250_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: key {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
    /// Whoever can write the config can deploy anything as root: it, and the way to it, must be
    /// root's (see [`crate::trusted`]).
    #[error(
        "config {path} is not safe to act on: {source}; whoever can change it can make drover \
         deploy anything as root. Fix: {fix}"
    )]
    Untrusted {
        path: PathBuf,
        source: crate::trusted::TrustError,
        fix: String,
    },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub source: Source,
    pub artifact: Artifact,
    pub release: Release,
    pub service: Service,
    pub health: Health,
    pub aws: Aws,
    pub agent: AgentSection,
    pub hooks: Hooks,
    pub environment: Option<Environment>,
    pub notify: Notify,
    pub fleet: Fleet,
    pub loadbalancer: Option<LoadBalancer>,
    pub autoscaling: Option<AutoScaling>,
    pub metrics: Metrics,
}

/// `[metrics]`: what the daemon has done, for Prometheus (`metrics.rs`).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// A `.prom` file for node_exporter's textfile collector, written after each pass; `None`:
    /// no metrics are written.
    pub textfile: Option<PathBuf>,
}

/// `[autoscaling]`: the lifecycle hooks drover completes (`lifecycle.rs`).
#[derive(Clone, Debug)]
pub struct AutoScaling {
    /// Held at launch (and into a warm pool) until the instance runs a healthy release.
    pub launch_hook: Option<String>,
    /// Held at scale-in while the release's pre-stop hook runs and the instance drains.
    pub terminate_hook: Option<String>,
    /// The group; `None`: from IMDS tags, else `DescribeAutoScalingInstances`.
    pub group: Option<String>,
}

/// `[loadbalancer]`: the target groups the instance leaves around a restart (`balancer.rs`).
#[derive(Clone, Debug)]
pub struct LoadBalancer {
    /// Target group ARNs, at least one.
    pub target_groups: Vec<String>,
    /// The port registered; `None`: each group's own.
    pub port: Option<u16>,
    /// Caps on the waits; `None`: what each group's settings imply.
    pub drain_timeout: Option<Duration>,
    pub healthy_timeout: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct Source {
    pub parameter: String,
    pub poll_interval: Duration,
}

#[derive(Clone, Debug)]
pub struct Artifact {
    pub bucket: String,
    /// Object key template; contains `{version}`.
    pub key: String,
    /// With any, every artifact must carry `{key}.minisig` by one of them.
    pub trusted_keys: Vec<crate::signature::PublicKey>,
    /// Largest tarball accepted, in bytes (compressed).
    pub max_size: u64,
    /// Largest sum of unpacked file sizes, in bytes: the decompression-bomb cap.
    pub max_unpacked_size: u64,
    pub max_entries: u64,
    /// The whole download, digest to last byte, must finish within this.
    pub download_timeout: Duration,
    /// How many ranged GETs of one artifact run at once.
    pub download_connections: usize,
    /// The size of each ranged GET; an artifact no larger is fetched with one GET.
    pub download_part_size: u64,
}

impl Artifact {
    pub fn key_for(&self, version: &crate::version::Version) -> String {
        self.key.replace("{version}", version.as_str())
    }

    /// The keys' common prefix, up to `{version}` (`releases/`): what may be listed.
    pub fn prefix(&self) -> &str {
        self.key.split("{version}").next().unwrap_or_default()
    }

    /// What `version`'s signature must be bound to: its key, its version, and whether the key's
    /// file name tells versions apart (`{version}` in the template's last segment).
    pub fn binding(&self, version: &crate::version::Version) -> crate::signature::Binding {
        crate::signature::Binding {
            key: self.key_for(version),
            version: version.as_str().to_owned(),
            file_name_carries_version: (self.key.rsplit('/').next())
                .is_some_and(|last| last.contains("{version}")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Release {
    pub root: PathBuf,
    pub keep: usize,
    /// `user[:group]` the unpacked files are given to; `None` keeps them root's.
    pub owner: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Service {
    pub units: Vec<String>,
    /// How long one restart job may take before it counts as failed.
    pub restart_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Health {
    pub url: Option<String>,
    pub timeout: Duration,
    pub interval: Duration,
    pub successes: u32,
}

/// `[hooks]`: how the hooks a release ships (see [`crate::hooks`]) are run.
#[derive(Clone, Debug)]
pub struct Hooks {
    /// Each hook's time limit.
    pub timeout: Duration,
    /// `user[:group]` hooks run as; `None` falls back to `[release] owner`, then root.
    pub user: Option<String>,
}

/// `[environment]`: the app's settings and secrets, from the SSM parameters under `path`.
#[derive(Clone, Debug)]
pub struct Environment {
    /// A parameter path such as `/app/env`; its direct children become variables.
    pub path: String,
    /// The EnvironmentFile the app's units read (mode 0600).
    pub file: PathBuf,
}

/// `[notify]`: where deploy outcomes are announced.
#[derive(Clone, Debug, Default)]
pub struct Notify {
    /// Gets a JSON POST on `deployed`, `reverted` and `revert_failed`.
    pub webhook_url: Option<String>,
}

/// `[fleet]`: status objects and the fleet-wide halt (docs/FLEET.md).
#[derive(Clone, Debug)]
pub struct Fleet {
    /// Key prefix in `[artifact] bucket` for the instances' status objects; `None`: none are
    /// written and nothing halts.
    pub status_prefix: Option<String>,
    /// Failures reported for one request that hold every instance whose turn comes later.
    pub max_failures: u32,
    /// At most this many instances out of service at once (`lease.rs`); needs `status_prefix`.
    pub max_in_flight: Option<crate::lease::MaxInFlight>,
    /// How long a lease lasts unless given back or renewed: what an instance that dies holding
    /// one keeps its slot for.
    pub lease_ttl: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct Aws {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// The instance metadata service (IMDSv2), for an emulator; default: the EC2 one.
    pub metadata_endpoint_url: Option<String>,
}

#[derive(Clone, Debug)]
pub struct AgentSection {
    pub state_dir: PathBuf,
}

/// The main file, its drop-ins and the command line's flags, merged.
pub mod layers;
/// The file as written, before defaults and checks.
mod raw;
/// One check per section, from the raw file to its section of [`Config`].
mod sections;

impl Config {
    /// Reads the config at `path` and its drop-ins ([`layers`]), each only if only root (or the
    /// user running drover) can have written it ([`crate::trusted`]), and checks it, also
    /// against this machine's users.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_layers(path, None).map(|(config, _)| config)
    }

    /// [`Config::load`], with `flags` (the command line's `--bucket` and the like, as a config
    /// table) merged last. With flags, the main file may be missing.
    pub fn load_layers(
        path: &Path,
        flags: Option<toml::Table>,
    ) -> Result<(Self, Layers), ConfigError> {
        let mut layers = Layers::default();
        match read_trusted(path) {
            Ok(text) => {
                layers.merged = layers::parse(&text, path)?;
                layers.files.push(path.to_owned());
            }
            Err(ConfigError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && flags.is_some() => {}
            Err(e) => return Err(e),
        }
        for dropin in layers::dropins(&layers::dropin_dir(path))? {
            let table = layers::parse(&read_trusted(&dropin)?, &dropin)?;
            layers::merge(&mut layers.merged, table);
            layers.files.push(dropin);
        }
        if let Some(flags) = flags {
            layers.flags = true;
            layers::merge(&mut layers.merged, flags);
        }
        let origin = layers.origin(path);
        let raw: raw::File = toml::Value::Table(layers.merged.clone())
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: origin.clone(),
                message: e.to_string().trim_end().to_owned(),
            })?;
        let config = sections::from_raw(raw, &origin)?;
        // Names as well as numbers, now that the machine's users are at hand. A user that does
        // not exist yet is checked again when a hook runs.
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        check_hooks_user(
            config.hooks.user.as_deref(),
            config.release.owner.as_deref(),
            |spec| spec_uid(spec, &passwd),
        )
        .map_err(|reason| ConfigError::Invalid {
            path: origin,
            key: "hooks.user",
            reason,
        })?;
        Ok((config, layers))
    }

    /// Parses config text; `path` is only used to name the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: raw::File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        sections::from_raw(raw, path)
    }
}

/// A config file's text, if nobody but root or the running user could have written it.
fn read_trusted(path: &Path) -> Result<String, ConfigError> {
    use crate::trusted::TrustError;
    crate::trusted::read_to_string(path).map_err(|e| match e {
        TrustError::Io(source) => ConfigError::Read {
            path: path.to_owned(),
            source,
        },
        untrusted => ConfigError::Untrusted {
            path: path.to_owned(),
            fix: untrusted.fix().unwrap_or_default(),
            source: untrusted,
        },
    })
}

/// `[hooks] user` must not be root while `[release] owner` gives the release's files, its hooks
/// among them, to another user: root would run files that user can rewrite. `uid` gives a
/// `user[:group]`'s uid where it is known; an owner whose uid is unknown counts as not root.
pub fn check_hooks_user(
    hooks_user: Option<&str>,
    owner: Option<&str>,
    uid: impl Fn(&str) -> Option<u32>,
) -> Result<(), String> {
    // Whoever runs the hooks, a group of root for a user that is not root is root's reach.
    if let Some((_, group)) = hooks_user.or(owner).and_then(|s| s.split_once(':')) {
        let spec = hooks_user.or(owner).unwrap_or_default();
        if matches!(group, "0" | "root") && uid(spec) != Some(0) {
            let key = if hooks_user.is_some() {
                "hooks.user"
            } else {
                "release.owner"
            };
            return Err(format!(
                "{key} {spec:?} has group root (gid 0): hooks its user can rewrite would run \
                 with root's group; name another group"
            ));
        }
    }
    let (Some(user), Some(owner)) = (hooks_user, owner) else {
        return Ok(());
    };
    if uid(user) != Some(0) || uid(owner) == Some(0) {
        return Ok(());
    }
    Err(format!(
        "{user:?} is root (uid 0), and release.owner {owner:?} owns the release's files, its \
         hooks among them: root would run hooks that {owner:?} can rewrite. Remove hooks.user \
         (hooks then run as release.owner) or name a user without privileges"
    ))
}

/// The uid a `user[:group]` names: `root` and numbers as written, other names from `passwd`
/// (the text of `/etc/passwd`).
pub fn spec_uid(spec: &str, passwd: &str) -> Option<u32> {
    let user = spec.split(':').next().unwrap_or(spec);
    if user == "root" {
        return Some(0);
    }
    if let Ok(uid) = user.parse() {
        return Some(uid);
    }
    crate::owner::resolve(user, passwd, "").ok().map(|o| o.uid)
}

pub(crate) fn is_unit_name(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".service", ".socket", ".target", ".timer", ".path", ".mount", ".slice", ".scope",
    ];
    SUFFIXES
        .iter()
        .any(|s| name.len() > s.len() && name.ends_with(s))
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c))
}

#[cfg(test)]
mod tests;
