//! The command line's words: commands, their flags and positionals, each with its help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config;

/// How `drover publish` packs a directory.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(super) enum PackFormat {
    Gzip,
    Zstd,
}

/// `drover --version`: the version and the commit it was built from (agent/build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DROVER_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "drover",
    version = VERSION,
    about = "Pull-based deployment agent: SSM version, S3 tarball, health-gated switch"
)]
pub(super) struct Cli {
    /// Configuration file; its drop-ins are the *.toml files of the directory named like it
    /// with .d (config.d), merged over it in name order.
    #[arg(long, global = true, env = "DROVER_CONFIG", default_value = config::DEFAULT_PATH)]
    pub(super) config: PathBuf,
    /// Also log debug detail.
    #[arg(long, short, global = true)]
    pub(super) verbose: bool,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand)]
pub(super) enum Command {
    /// The daemon: reconcile forever, every poll_interval plus jitter.
    Run,
    /// One reconcile; exit 0 only if the desired version runs and is healthy.
    Once,
    /// Current, previous and last outcome, from the state on disk.
    Status {
        /// Print JSON (with "schema": 1) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Switch back to the previous good release now.
    Rollback,
    /// The last outcomes on this instance (deploys, reverts, rejections...), newest first.
    History {
        /// Print JSON (with "schema": 1) instead of text.
        #[arg(long)]
        json: bool,
        /// How many outcomes to show.
        #[arg(short = 'n', value_name = "N", default_value_t = 20)]
        n: usize,
    },
    /// Hold this instance on what it runs: polls go on, no new version is deployed.
    Pause {
        /// When it lapses: an RFC 3339 time or a duration from now (2h) [default: never].
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Why, for `status` and the fleet's status objects.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// End `drover pause`: the next pass deploys what the parameter asks for.
    Resume,
    /// Pack PATH (a directory, or take a .tar.gz or .tar.zst) and upload it with its .sha256
    /// (and, with --sign, its .minisig).
    Publish {
        /// The release's version: letters, digits and . _ + - (at most 128).
        #[arg(long)]
        version: String,
        /// Sign with this minisign secret key (unencrypted: `minisign -G -W`).
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        /// How a directory is packed: gzip (.tar.gz) or zstd (.tar.zst, level 9). A file is
        /// uploaded as it is, in either format.
        #[arg(long, value_enum, default_value = "gzip")]
        format: PackFormat,
        /// Pack, check and sign as for real; upload nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        target: Target,
        /// The release: a directory to pack, or a .tar.gz or .tar.zst to upload as it is.
        path: PathBuf,
    },
    /// Put VERSION into the parameter, once its artifact and digest (and, with trusted keys,
    /// signature) are in the bucket; says what changes.
    Promote {
        /// The version to deploy.
        version: String,
        /// A staged rollout, as JSON: '{"duration":"30m"}' or
        /// '{"waves":[{"fraction":0.05,"after":"0s"},{"fraction":1,"after":"20m"}]}'.
        #[arg(long, value_name = "JSON")]
        rollout: Option<String>,
        /// Promote even when the bucket lacks the artifact, its digest or its signature.
        #[arg(long)]
        force: bool,
        /// Check and say what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        target: Target,
    },
    /// The fleet, from the instances' status objects ([fleet] status_prefix).
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Check config, credentials, parameter, bucket, artifact, units, disk space; say what to
    /// fix.
    Doctor {
        /// Print JSON (with the merged config) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print cloud-init user-data that installs drover on a new instance (reads no --config).
    UserData(UserDataArgs),
    /// Print the drover.service drop-in that makes the config's release root, state directory
    /// and environment file's directory, and lets the sandbox write them (for
    /// /etc/systemd/system/drover.service.d/paths.conf).
    SandboxPaths,
    /// Verify and unpack a local .tar.gz or .tar.zst exactly as an instance would, into the new
    /// DEST.
    Unpack(UnpackArgs),
}

#[derive(Subcommand)]
pub(super) enum FleetCommand {
    /// How many instances run which version, and for VERSION (default: the parameter's): how
    /// many run it, wait for their turn, halted, failed.
    Status {
        /// The version to count [default: the one the parameter asks for].
        version: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetTarget,
    },
    /// What each instance did with VERSION: deployed, reverted, rejected, held, when, why.
    History {
        /// The version to look for.
        version: String,
        /// Print JSON (with "schema": 1) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetTarget,
    },
}

/// Where the releases and the parameter are: these flags win over the config file, which they
/// make optional (`drover publish` on a laptop or in CI).
#[derive(Args, Clone, Default)]
pub(super) struct Target {
    /// The bucket of the releases [default: [artifact] bucket of the config].
    #[arg(long)]
    pub(super) bucket: Option<String>,
    /// Object key of a release, with {version} [default: [artifact] key, else
    /// releases/{version}.tar.gz].
    #[arg(long)]
    pub(super) key: Option<String>,
    /// The SSM parameter holding the desired version [default: [source] parameter, else
    /// /app/current-version].
    #[arg(long)]
    pub(super) parameter: Option<String>,
    /// The AWS region [default: [aws] region, else AWS_REGION, the profile, or the instance
    /// metadata].
    #[arg(long)]
    pub(super) region: Option<String>,
    /// The AWS endpoint (an emulator, a VPC endpoint) [default: [aws] endpoint_url, else AWS's].
    #[arg(long, value_name = "URL")]
    pub(super) endpoint_url: Option<String>,
}

/// [`Target`], and where the fleet's status objects are.
#[derive(Args, Clone, Default)]
pub(super) struct FleetTarget {
    #[command(flatten)]
    pub(super) target: Target,
    /// Key prefix of the instances' status objects in the bucket [default: [fleet]
    /// status_prefix].
    #[arg(long, value_name = "PREFIX")]
    pub(super) status_prefix: Option<String>,
}

/// Sets `[section] key = value` in a config layer.
fn set(layer: &mut toml::Table, section: &str, key: &str, value: &Option<String>) {
    if let Some(value) = value {
        let table = layer
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(table) = table {
            table.insert(key.into(), toml::Value::String(value.clone()));
        }
    }
}

impl Target {
    /// The flags given, as a config layer (empty when there are none).
    fn layer(&self) -> toml::Table {
        let mut layer = toml::Table::new();
        set(&mut layer, "artifact", "bucket", &self.bucket);
        set(&mut layer, "artifact", "key", &self.key);
        set(&mut layer, "source", "parameter", &self.parameter);
        set(&mut layer, "aws", "region", &self.region);
        set(&mut layer, "aws", "endpoint_url", &self.endpoint_url);
        layer
    }
}

impl Command {
    /// The flags that stand in for the config file, for the commands that take them.
    pub(super) fn target(&self) -> Option<&Target> {
        match self {
            Command::Publish { target, .. } | Command::Promote { target, .. } => Some(target),
            Command::Fleet(
                FleetCommand::Status { fleet, .. } | FleetCommand::History { fleet, .. },
            ) => Some(&fleet.target),
            _ => None,
        }
    }

    /// Those flags as a config layer, merged over the config file; `None` when none are given.
    pub(super) fn layer(&self) -> Option<toml::Table> {
        let mut layer = self.target()?.layer();
        if let Command::Fleet(
            FleetCommand::Status { fleet, .. } | FleetCommand::History { fleet, .. },
        ) = self
        {
            set(&mut layer, "fleet", "status_prefix", &fleet.status_prefix);
        }
        (!layer.is_empty()).then_some(layer)
    }
}

#[derive(Args)]
pub(super) struct UnpackArgs {
    /// The digest the archive must have (64 hex digits); without it, it is only printed.
    #[arg(long, value_name = "HEX")]
    pub(super) sha256: Option<String>,
    /// Largest sum of file sizes [default: [artifact] max_unpacked_size of the config if there
    /// is one, else 8GiB].
    #[arg(long, value_name = "SIZE")]
    pub(super) max_unpacked_size: Option<String>,
    /// Most entries [default: [artifact] max_entries of the config if there is one, else 250000].
    #[arg(long, value_name = "N")]
    pub(super) max_entries: Option<u64>,
    /// The artifact: a .tar.gz or .tar.zst.
    pub(super) archive: PathBuf,
    /// A directory that does not exist yet.
    pub(super) dest: PathBuf,
}

#[derive(Args)]
pub(super) struct UserDataArgs {
    /// Where the instance gets the drover binary: an https:// URL or an absolute path on the
    /// image. Once per architecture as ARCH=URL_OR_PATH (x86_64, aarch64): the instance installs
    /// the one `uname -m` names; without ARCH=, x86_64's.
    #[arg(long, value_name = "[ARCH=]URL_OR_PATH", required = true)]
    pub(super) source: Vec<String>,
    /// The binary's SHA-256 (64 lowercase hex digits), as [ARCH=]HEX for each --source; the
    /// instance installs nothing else.
    #[arg(long, value_name = "[ARCH=]HEX", required = true)]
    pub(super) sha256: Vec<String>,
    /// The instance's config.toml, checked and embedded as it is.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["bucket", "parameter", "key", "units", "health_url"]
    )]
    pub(super) config_file: Option<PathBuf>,
    /// Without --config-file: the bucket of the releases (a config is written from these flags).
    #[arg(long, required_unless_present = "config_file")]
    pub(super) bucket: Option<String>,
    /// The SSM parameter holding the desired version [default: /app/current-version].
    #[arg(long)]
    pub(super) parameter: Option<String>,
    /// Object key of a release, with {version} [default: releases/{version}.tar.gz].
    #[arg(long)]
    pub(super) key: Option<String>,
    /// Units restarted after a switch, comma-separated; "" for none [default: app.service].
    #[arg(long, value_name = "UNIT,...", value_delimiter = ',')]
    pub(super) units: Option<Vec<String>>,
    /// URL that must answer 2xx after a switch [default: none: units must only not fail].
    #[arg(long, value_name = "URL")]
    pub(super) health_url: Option<String>,
    /// A unit file of the app, installed in /etc/systemd/system and enabled (repeatable).
    #[arg(long, value_name = "FILE")]
    pub(super) app_unit: Vec<PathBuf>,
    /// PEM CAs of a private download server, trusted for the download instead of the system's.
    #[arg(long, value_name = "FILE")]
    pub(super) download_ca: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag and positional of every command says what it is for in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                if arg.get_help().is_none() && !["help", "version"].contains(&arg.get_id().as_str())
                {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(
            &<Cli as clap::CommandFactory>::command(),
            "drover",
            &mut missing,
        );
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}
