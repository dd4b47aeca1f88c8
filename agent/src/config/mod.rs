//! `/etc/drover/config.toml`: read, check every key, and turn it into validated [`Config`].
//!
//! Parsing happens in two layers (as zincati does): [`raw`] mirrors the file with serde and rejects
//! unknown keys; `sections.rs` applies defaults and checks values, one function per section,
//! naming the key at fault.

use std::path::{Path, PathBuf};
use std::time::Duration;

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
}

impl Artifact {
    pub fn key_for(&self, version: &crate::version::Version) -> String {
        self.key.replace("{version}", version.as_str())
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

/// The file as written, before defaults and checks.
mod raw;
/// One check per section, from the raw file to its section of [`Config`].
mod sections;

impl Config {
    /// Reads the config at `path`, if only root (or the user running drover) can have written it
    /// ([`crate::trusted`]), and checks it, also against this machine's users.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use crate::trusted::TrustError;
        let text = crate::trusted::read_to_string(path).map_err(|e| match e {
            TrustError::Io(source) => ConfigError::Read {
                path: path.to_owned(),
                source,
            },
            untrusted => ConfigError::Untrusted {
                path: path.to_owned(),
                fix: untrusted.fix().unwrap_or_default(),
                source: untrusted,
            },
        })?;
        let config = Self::parse(&text, path)?;
        // Names as well as numbers, now that the machine's users are at hand. A user that does
        // not exist yet is checked again when a hook runs.
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        check_hooks_user(
            config.hooks.user.as_deref(),
            config.release.owner.as_deref(),
            |spec| spec_uid(spec, &passwd),
        )
        .map_err(|reason| ConfigError::Invalid {
            path: path.to_owned(),
            key: "hooks.user",
            reason,
        })?;
        Ok(config)
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
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/drover/config.toml"))
    }

    const MINIMAL: &str = "[artifact]\nbucket = \"b\"\n";

    #[test]
    fn hooks_environment_and_notify_sections() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.hooks.timeout, Duration::from_secs(300));
        assert!(c.environment.is_none() && c.notify.webhook_url.is_none());

        let c = parse(&format!(
            "{MINIMAL}[hooks]\ntimeout = \"30s\"\nuser = \"app:app\"\n\
             [environment]\npath = \"/app/env\"\n\
             [notify]\nwebhook_url = \"https://hooks.example.com/x\"\n"
        ))
        .unwrap();
        assert_eq!(c.hooks.timeout, Duration::from_secs(30));
        assert_eq!(c.hooks.user.as_deref(), Some("app:app"));
        let env = c.environment.unwrap();
        assert_eq!(
            (env.path.as_str(), env.file),
            ("/app/env", PathBuf::from("/var/lib/drover/app.env"))
        );

        // An empty [environment] is off; a file without a path is a mistake.
        assert!(parse(&format!("{MINIMAL}[environment]\n"))
            .unwrap()
            .environment
            .is_none());
        for (text, key) in [
            (
                "[environment]\nfile = \"/etc/app.env\"\n",
                "environment.file",
            ),
            ("[environment]\npath = \"app/env\"\n", "environment.path"),
            ("[environment]\npath = \"/app/env/\"\n", "environment.path"),
            (
                "[environment]\npath = \"/e\"\nfile = \"app.env\"\n",
                "environment.file",
            ),
            ("[hooks]\ntimeout = \"0s\"\n", "hooks.timeout"),
            ("[hooks]\nuser = \"-x\"\n", "hooks.user"),
            (
                "[notify]\nwebhook_url = \"ftp://secret@x\"\n",
                "notify.webhook_url",
            ),
        ] {
            let e = parse(&format!("{MINIMAL}{text}")).unwrap_err().to_string();
            assert!(e.contains(&format!("key {key}:")), "{text}: {e}");
            assert!(
                !e.contains("secret"),
                "the webhook URL is not repeated: {e}"
            );
        }
    }

    #[test]
    fn hooks_never_run_as_root_over_files_the_owner_can_rewrite() {
        let config = |hooks: &str, owner: &str| {
            let mut text = MINIMAL.to_owned();
            if !owner.is_empty() {
                text += &format!("[release]\nowner = \"{owner}\"\n");
            }
            if !hooks.is_empty() {
                text += &format!("[hooks]\nuser = \"{hooks}\"\n");
            }
            parse(&text)
        };
        for root in ["root", "0", "0:0", "root:app", "0:1002", "00"] {
            let e = config(root, "app").unwrap_err().to_string();
            assert!(
                e.contains("key hooks.user:") && e.contains("release.owner \"app\""),
                "{root}: {e}"
            );
        }
        // Root over root's files, anyone without an owner, the owner itself: as before.
        for (hooks, owner) in [
            ("root", ""),
            ("0", ""),
            ("root", "root"),
            ("root", "0:app"),
            ("app", "app"),
            ("", "app"),
            ("deploy", "app"),
            ("1001", "app"),
        ] {
            assert!(config(hooks, owner).is_ok(), "{hooks:?} {owner:?}");
        }

        // A name that is uid 0 on this machine is caught where /etc/passwd is read.
        let passwd = "root:x:0:0::/root:/bin/sh\ntoor:x:0:0::/root:/bin/sh\n\
                      app:x:1001:1002::/home/app:/bin/sh\n";
        let uid = |spec: &str| spec_uid(spec, passwd);
        assert_eq!(uid("toor:app"), Some(0));
        assert_eq!(uid("app"), Some(1001));
        assert_eq!(uid("1500:7"), Some(1500));
        assert_eq!(uid("nobody-yet"), None);
        assert!(check_hooks_user(Some("toor"), Some("app"), uid).is_err());
        assert!(check_hooks_user(Some("toor"), Some("nobody-yet"), uid).is_err());
        assert!(check_hooks_user(Some("toor"), Some("toor"), uid).is_ok());
        assert!(check_hooks_user(Some("app"), Some("toor"), uid).is_ok());
        assert!(check_hooks_user(Some("nobody-yet"), Some("app"), uid).is_ok());
        assert!(check_hooks_user(Some("toor"), None, uid).is_ok());
        // Without /etc/passwd, only root by name or number.
        assert!(check_hooks_user(Some("toor"), Some("app"), |s| spec_uid(s, "")).is_ok());
        // Group root for a user that is not root (issue 13 review).
        assert!(check_hooks_user(Some("app:0"), Some("app"), uid).is_err());
        assert!(check_hooks_user(Some("app:root"), None, uid).is_err());
        assert!(check_hooks_user(None, Some("1001:0"), uid).is_err());
        assert!(check_hooks_user(None, Some("app:app"), uid).is_ok());
        assert!(check_hooks_user(Some("root:root"), None, uid).is_ok());
    }

    #[test]
    fn fleet_section() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!((c.fleet.status_prefix, c.fleet.max_failures), (None, 1));
        let c = parse(&format!(
            "{MINIMAL}[fleet]\nstatus_prefix = \"drover/status/\"\nmax_failures = 3\n\
             [aws]\nmetadata_endpoint_url = \"http://127.0.0.1:1338\"\n"
        ))
        .unwrap();
        assert_eq!(c.fleet.status_prefix.as_deref(), Some("drover/status/"));
        assert_eq!(c.fleet.max_failures, 3);
        assert!(c.aws.metadata_endpoint_url.is_some());
        assert_eq!(c.fleet.max_in_flight, None);
        assert_eq!(c.fleet.lease_ttl, Duration::from_secs(900));
        let c = parse(&format!(
            "{MINIMAL}[fleet]\nstatus_prefix = \"s/\"\nmax_in_flight = \"25%\"\nlease_ttl = \"2m\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.fleet.max_in_flight,
            Some(crate::lease::MaxInFlight::Fraction(0.25))
        );
        assert_eq!(c.fleet.lease_ttl, Duration::from_secs(120));
        for (text, key) in [
            ("[fleet]\nstatus_prefix = \"/s\"\n", "fleet.status_prefix"),
            (
                "[fleet]\nstatus_prefix = \"a/../b\"\n",
                "fleet.status_prefix",
            ),
            ("[fleet]\nmax_failures = 0\n", "fleet.max_failures"),
            ("[fleet]\nmax_in_flight = 1\n", "fleet.max_in_flight"),
            (
                "[fleet]\nstatus_prefix = \"s/\"\nmax_in_flight = \"half\"\n",
                "fleet.max_in_flight",
            ),
            (
                "[fleet]\nstatus_prefix = \"s/\"\nmax_in_flight = 0\n",
                "fleet.max_in_flight",
            ),
            (
                "[aws]\nmetadata_endpoint_url = \"https://x\"\n",
                "aws.metadata_endpoint_url",
            ),
        ] {
            let e = parse(&format!("{MINIMAL}{text}")).unwrap_err().to_string();
            assert!(e.contains(&format!("key {key}:")), "{text}: {e}");
        }
    }

    #[test]
    fn loadbalancer_section() {
        assert!(parse(MINIMAL).unwrap().loadbalancer.is_none());
        let arn =
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/app/0123456789abcdef";
        let c = parse(&format!(
            "{MINIMAL}[loadbalancer]\ntarget_groups = [\"{arn}\"]\nport = 8080\ndrain_timeout = \"45s\"\n"
        ))
        .unwrap();
        let lb = c.loadbalancer.unwrap();
        assert_eq!(lb.target_groups, [arn]);
        assert_eq!(lb.port, Some(8080));
        assert_eq!(lb.drain_timeout, Some(Duration::from_secs(45)));
        assert_eq!(lb.healthy_timeout, None, "the group's own pace");
        for (text, key) in [
            ("[loadbalancer]\n", "loadbalancer.target_groups"),
            (
                "[loadbalancer]\ntarget_groups = [\"app\"]\n",
                "loadbalancer.target_groups",
            ),
            (
                &*format!("[loadbalancer]\ntarget_groups = [\"{arn}\"]\nport = 0\n"),
                "loadbalancer.port",
            ),
            (
                &*format!("[loadbalancer]\ntarget_groups = [\"{arn}\"]\nport = 70000\n"),
                "loadbalancer.port",
            ),
            (
                &*format!("[loadbalancer]\ntarget_groups = [\"{arn}\"]\ndrain_timeout = \"0s\"\n"),
                "loadbalancer.drain_timeout",
            ),
        ] {
            assert_eq!(invalid_key(&format!("{MINIMAL}{text}")), key, "{text}");
        }
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.source.parameter, "/app/current-version");
        assert_eq!(c.source.poll_interval, Duration::from_secs(30));
        assert_eq!(c.artifact.key, "releases/{version}.tar.gz");
        assert_eq!(c.release.root, PathBuf::from("/opt/app"));
        assert_eq!(c.release.keep, 5);
        assert_eq!(c.service.units, vec!["app.service".to_string()]);
        assert_eq!(c.health.successes, 3);
        assert_eq!(c.health.timeout, Duration::from_secs(60));
        assert_eq!(c.agent.state_dir, PathBuf::from("/var/lib/drover"));
    }

    #[test]
    fn full_spec_example_parses() {
        let c = parse(
            r#"
[source]
parameter = "/app/current-version"
poll_interval = "30s"
[artifact]
bucket = "my-releases"
key = "releases/{version}.tar.gz"
[release]
root = "/opt/app"
keep = 5
[service]
units = ["app.service", "worker@1.service"]
[health]
url = "http://127.0.0.1:8080/health"
timeout = "60s"
interval = "500ms"
successes = 3
[aws]
region = "us-east-1"
endpoint_url = "http://127.0.0.1:5005"
"#,
        )
        .unwrap();
        assert_eq!(c.health.interval, Duration::from_millis(500));
        assert_eq!(c.aws.endpoint_url.as_deref(), Some("http://127.0.0.1:5005"));
        let v = crate::version::Version::parse("1.4.2").unwrap();
        assert_eq!(c.artifact.key_for(&v), "releases/1.4.2.tar.gz");
        assert!(c.artifact.binding(&v).file_name_carries_version);
    }

    #[test]
    fn a_file_name_binds_the_version_only_when_it_carries_it() {
        let v = crate::version::Version::parse("2.0").unwrap();
        for (key, carries) in [
            ("releases/{version}.tar.gz", true),
            ("{version}.tgz", true),
            ("app/app-{version}.tar.gz", true),
            ("releases/{version}/app.tar.gz", false),
            ("{version}/app.tar.gz", false),
            ("{version}/{version}/app.tar.gz", false),
        ] {
            let c = parse(&format!("{MINIMAL}key = \"{key}\"\n")).unwrap();
            let b = c.artifact.binding(&v);
            assert_eq!(b.file_name_carries_version, carries, "{key}");
            assert_eq!(b.key, key.replace("{version}", "2.0"));
            assert_eq!(b.version, "2.0");
        }
    }

    fn invalid_key(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Invalid { key, .. }) => key.to_string(),
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(invalid_key(""), "artifact");
        assert_eq!(invalid_key("[artifact]\n"), "artifact.bucket");
        assert_eq!(
            invalid_key(&format!("{MINIMAL}key = \"x.tgz\"")),
            "artifact.key"
        );
        assert_eq!(
            invalid_key(&format!("{MINIMAL}[source]\npoll_interval = \"30\"")),
            "source.poll_interval"
        );
        assert_eq!(
            invalid_key(&format!("{MINIMAL}[source]\npoll_interval = \"0s\"")),
            "source.poll_interval"
        );
        assert_eq!(
            invalid_key(&format!("{MINIMAL}[release]\nkeep = 1")),
            "release.keep"
        );
        assert_eq!(
            invalid_key(&format!("{MINIMAL}[release]\nroot = \"opt\"")),
            "release.root"
        );
        assert_eq!(
            invalid_key(&format!("{MINIMAL}[service]\nunits = [\"app\"]")),
            "service.units"
        );
        assert_eq!(
            invalid_key(&format!("{MINIMAL}[health]\nsuccesses = 0")),
            "health.successes"
        );
        assert_eq!(
            invalid_key(&format!("{MINIMAL}[health]\nurl = \"ftp://x\"")),
            "health.url"
        );
        assert_eq!(
            invalid_key(&format!("{MINIMAL}trusted_keys = [\"RWQ\"]")),
            "artifact.trusted_keys"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        let err = parse(&format!("{MINIMAL}[health]\nurll = \"x\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/drover/config.toml"), "{err}");
        assert!(err.contains("urll"), "{err}");
        let err = parse(&format!("{MINIMAL}[healthh]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("healthh"), "{err}");
    }
}
