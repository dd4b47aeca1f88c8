//! The command line: parse, load the config, build the real clients, run, pick the exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::aws::{self, S3Store, SsmSource};
use crate::config::{self, Config};
use crate::health::HttpProbe;
use crate::reconcile::{Agent, Mode, Outcome, Outside};
use crate::systemd::Systemd;
use crate::unpack::compression::Format;
use crate::userdata::{self, ConfigFlags, UserData};
use crate::{fleet_history, history, logging, notify, operator, pause, plan};

/// How `drover publish` packs a directory.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PackFormat {
    Gzip,
    Zstd,
}

#[derive(Parser)]
#[command(
    name = "drover",
    version,
    about = "Pull-based deployment agent: SSM version, S3 tarball, health-gated switch"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Also log debug detail.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The daemon: reconcile forever, every poll_interval plus jitter.
    Run,
    /// One reconcile; exit 0 only if the desired version runs and is healthy.
    Once,
    /// Current, previous and last outcome, from the state on disk.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Switch back to the previous good release now.
    Rollback,
    /// The last outcomes on this instance (deploys, reverts, rejections...), newest first.
    History {
        #[arg(long)]
        json: bool,
        #[arg(short = 'n', value_name = "N", default_value_t = 20)]
        n: usize,
    },
    /// Hold this instance on what it runs: polls go on, no new version is deployed.
    Pause {
        /// When it lapses: an RFC 3339 time or a duration from now (2h) [default: never].
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// End `drover pause`: the next pass deploys what the parameter asks for.
    Resume,
    /// Pack PATH (a directory, or take a .tar.gz or .tar.zst) and upload it with its .sha256
    /// (and, with --sign, its .minisig).
    Publish {
        #[arg(long)]
        version: String,
        /// Sign with this minisign secret key (unencrypted: `minisign -G -W`).
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        /// How a directory is packed: gzip (.tar.gz) or zstd (.tar.zst, level 9). A file is
        /// uploaded as it is, in either format.
        #[arg(long, value_enum, default_value = "gzip")]
        format: PackFormat,
        path: PathBuf,
    },
    /// Put VERSION into the parameter.
    Promote {
        version: String,
        /// A staged rollout, as JSON: '{"duration":"30m"}' or
        /// '{"waves":[{"fraction":0.05,"after":"0s"},{"fraction":1,"after":"20m"}]}'.
        #[arg(long, value_name = "JSON")]
        rollout: Option<String>,
    },
    /// The fleet, from the instances' status objects ([fleet] status_prefix).
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Check config, credentials, parameter, artifact, units, disk space; say what to fix.
    Doctor,
    /// Print cloud-init user-data that installs drover on a new instance (reads no --config).
    UserData(UserDataArgs),
    /// Verify and unpack a local .tar.gz or .tar.zst exactly as an instance would, into the new
    /// DEST.
    Unpack(UnpackArgs),
}

#[derive(Subcommand)]
enum FleetCommand {
    /// How many instances run which version, and for VERSION (default: the parameter's): how
    /// many run it, wait for their turn, halted, failed.
    Status {
        version: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// What each instance did with VERSION: deployed, reverted, rejected, held, when, why.
    History {
        version: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct UnpackArgs {
    /// The digest the archive must have (64 hex digits); without it, it is only printed.
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// Largest sum of file sizes [default: [artifact] max_unpacked_size of the config if there
    /// is one, else 8GiB].
    #[arg(long, value_name = "SIZE")]
    max_unpacked_size: Option<String>,
    /// Most entries [default: [artifact] max_entries of the config if there is one, else 250000].
    #[arg(long, value_name = "N")]
    max_entries: Option<u64>,
    archive: PathBuf,
    /// A directory that does not exist yet.
    dest: PathBuf,
}

#[derive(Args)]
struct UserDataArgs {
    /// Where the instance gets the drover binary: an https:// URL or an absolute path on the
    /// image. Once per architecture as ARCH=URL_OR_PATH (x86_64, aarch64): the instance installs
    /// the one `uname -m` names; without ARCH=, x86_64's.
    #[arg(long, value_name = "[ARCH=]URL_OR_PATH", required = true)]
    source: Vec<String>,
    /// The binary's SHA-256 (64 lowercase hex digits), as [ARCH=]HEX for each --source; the
    /// instance installs nothing else.
    #[arg(long, value_name = "[ARCH=]HEX", required = true)]
    sha256: Vec<String>,
    /// The instance's config.toml, checked and embedded as it is.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["bucket", "parameter", "key", "units", "health_url"]
    )]
    config_file: Option<PathBuf>,
    /// Without --config-file: the bucket of the releases (a config is written from these flags).
    #[arg(long, required_unless_present = "config_file")]
    bucket: Option<String>,
    /// The SSM parameter holding the desired version [default: /app/current-version].
    #[arg(long)]
    parameter: Option<String>,
    /// Object key of a release, with {version} [default: releases/{version}.tar.gz].
    #[arg(long)]
    key: Option<String>,
    /// Units restarted after a switch, comma-separated; "" for none [default: app.service].
    #[arg(long, value_name = "UNIT,...", value_delimiter = ',')]
    units: Option<Vec<String>>,
    /// URL that must answer 2xx after a switch [default: none: units must only not fail].
    #[arg(long, value_name = "URL")]
    health_url: Option<String>,
    /// A unit file of the app, installed in /etc/systemd/system and enabled (repeatable).
    #[arg(long, value_name = "FILE")]
    app_unit: Vec<PathBuf>,
    /// PEM CAs of a private download server, trusted for the download instead of the system's.
    #[arg(long, value_name = "FILE")]
    download_ca: Option<PathBuf>,
}

/// Exit statuses (SPEC: Command line).
const FAILED: u8 = 1;
const BAD_CONFIG: u8 = 2;

pub fn main() -> ExitCode {
    // What drover creates must not depend on who started it: the unit says UMask=0022, and an
    // operator's shell with umask 000 would otherwise make the release root, `releases/` and
    // a release's directories writable by the app's user (issue 13 review).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let cli = Cli::parse();
    logging::init(cli.verbose);
    // rustls on ring for every TLS client (the SDK's is built on it in aws.rs): reqwest, for
    // webhook notices, takes the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Renders text for another machine, so this one's config does not matter.
    if let Command::UserData(args) = &cli.command {
        return user_data(args);
    }
    // Needs no config, but takes its limits from one that is there.
    if let Command::Unpack(args) = &cli.command {
        return unpack(args, &cli.config);
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        // No other check runs on a config that is not to be trusted: it names the endpoints
        // the instance's credentials would be sent to.
        Err(e) if matches!(cli.command, Command::Doctor) => {
            print!("{}", crate::doctor::config_failed(&e).render());
            return ExitCode::from(BAD_CONFIG);
        }
        Err(e) => {
            eprintln!("drover: {e}");
            return ExitCode::from(BAD_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover: cannot start the runtime: {e}");
            return ExitCode::from(FAILED);
        }
    };
    runtime.block_on(dispatch(cli.command, config, &cli.config))
}

async fn dispatch(command: Command, config: Config, config_path: &std::path::Path) -> ExitCode {
    let result = match command {
        Command::Doctor => {
            let report = crate::doctor::run(&config, config_path).await;
            print!("{}", report.render());
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(FAILED)
            })
        }
        Command::Run => run(config).await,
        Command::Once => once(config).await,
        Command::Status { json } => operator::status(&config).map(|s| {
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print!("{}", s.render());
            }
            ExitCode::SUCCESS
        }),
        Command::Rollback => rollback(config).await,
        Command::History { json, n } => printed(history::show(&config.agent.state_dir, n, json)),
        Command::Pause { until, reason } => printed(pause::here(&config, until, reason)),
        Command::Resume => printed(pause::resume_here(&config)),
        Command::Fleet(FleetCommand::History { version, json }) => {
            printed(fleet_history::command(&config, &version, json).await)
        }
        Command::Publish {
            version,
            sign,
            format,
            path,
        } => {
            let sdk = aws::sdk_config(&config.aws).await;
            let store = S3Store::new(aws::s3_client(&sdk, &config.aws), &config.artifact.bucket);
            let format = match format {
                PackFormat::Gzip => Format::Gzip,
                PackFormat::Zstd => Format::Zstd,
            };
            operator::publish(&config, &store, &version, &path, sign.as_deref(), format)
                .await
                .map(|line| {
                    println!("{line}");
                    ExitCode::SUCCESS
                })
        }
        Command::UserData(args) => Ok(user_data(&args)),
        Command::Unpack(args) => Ok(unpack(&args, config_path)),
        Command::Fleet(FleetCommand::Status { version, json }) => {
            let sdk = aws::sdk_config(&config.aws).await;
            let store = S3Store::new(aws::s3_client(&sdk, &config.aws), &config.artifact.bucket);
            let source = SsmSource::new(&sdk, &config.source.parameter);
            operator::fleet_status(&config, &store, &source, version.as_deref())
                .await
                .map(|summary| {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&summary).unwrap_or_default()
                        );
                    } else {
                        print!("{}", summary.render());
                    }
                    ExitCode::SUCCESS
                })
        }
        Command::Promote { version, rollout } => {
            let sdk = aws::sdk_config(&config.aws).await;
            let source = SsmSource::new(&sdk, &config.source.parameter);
            operator::promote(&source, &version, rollout.as_deref())
                .await
                .map(|n| {
                    println!(
                        "{} = {version} (parameter version {n})",
                        config.source.parameter
                    );
                    ExitCode::SUCCESS
                })
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("drover: {e}");
        ExitCode::from(FAILED)
    })
}

/// A command's text on stdout.
fn printed(text: Result<String, String>) -> Result<ExitCode, String> {
    text.map(|text| {
        print!("{text}");
        ExitCode::SUCCESS
    })
}

/// `drover unpack`: bad flags or an unreadable config are usage errors; a rejected archive fails.
fn unpack(args: &UnpackArgs, config_path: &std::path::Path) -> ExitCode {
    let limits = match unpack_limits(args, config_path) {
        Ok(limits) => limits,
        Err(e) => {
            eprintln!("drover unpack: {e}");
            return ExitCode::from(BAD_CONFIG);
        }
    };
    let expected = match args.sha256.as_deref().map(str::parse).transpose() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("drover unpack: --sha256: {e}");
            return ExitCode::from(BAD_CONFIG);
        }
    };
    match operator::unpack_local(&args.archive, &args.dest, expected, &limits) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("drover unpack: {e}");
            ExitCode::from(FAILED)
        }
    }
}

fn unpack_limits(
    args: &UnpackArgs,
    config_path: &std::path::Path,
) -> Result<crate::unpack::Limits, String> {
    let mut limits = crate::unpack::Limits {
        max_unpacked_size: config::DEFAULT_MAX_UNPACKED_SIZE,
        max_entries: config::DEFAULT_MAX_ENTRIES,
    };
    if config_path.exists() {
        let artifact = Config::load(config_path)
            .map_err(|e| e.to_string())?
            .artifact;
        limits.max_unpacked_size = artifact.max_unpacked_size;
        limits.max_entries = artifact.max_entries;
    }
    if let Some(size) = &args.max_unpacked_size {
        limits.max_unpacked_size =
            crate::units::parse_size(size).map_err(|e| format!("--max-unpacked-size: {e}"))?;
    }
    if let Some(n) = args.max_entries {
        limits.max_entries = n;
    }
    Ok(limits)
}

/// `drover user-data`: bad input (flags, files, a config the agent would refuse) is a usage error.
fn user_data(args: &UserDataArgs) -> ExitCode {
    use std::io::Write;
    let text = match render_user_data(args) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("drover user-data: {e}");
            return ExitCode::from(BAD_CONFIG);
        }
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover user-data: cannot write to stdout: {e}");
            ExitCode::from(FAILED)
        }
    }
}

fn render_user_data(args: &UserDataArgs) -> Result<String, String> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let config_toml = match &args.config_file {
        Some(path) => {
            let text = read(path)?;
            Config::parse(&text, path).map_err(|e| e.to_string())?;
            text
        }
        None => ConfigFlags {
            bucket: args.bucket.clone().unwrap_or_default(),
            parameter: args.parameter.clone(),
            key: args.key.clone(),
            units: args
                .units
                .as_ref()
                .map(|units| units.iter().filter(|u| !u.is_empty()).cloned().collect()),
            health_url: args.health_url.clone(),
        }
        .to_toml()
        .map_err(|e| e.to_string())?,
    };
    let mut extra_files = Vec::new();
    let mut enable_units = Vec::new();
    for path in &args.app_unit {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: not a unit file name", path.display()))?;
        let file = userdata::unit_file(name, read(path)?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        extra_files.push(file);
        enable_units.push(name.to_string());
    }
    let download_ca = match &args.download_ca {
        Some(path) => Some(read(path)?),
        None => None,
    };
    UserData {
        binaries: userdata::pair(&args.source, &args.sha256).map_err(|e| e.to_string())?,
        config_toml,
        extra_files,
        enable_units,
        download_ca,
    }
    .render()
    .map_err(|e| e.to_string())
}

type RealAgent = Agent<(
    SsmSource,
    S3Store,
    Systemd,
    HttpProbe,
    aws::Elb,
    aws::Scaling,
)>;

async fn build_agent(config: Config, mode: Mode) -> Result<RealAgent, String> {
    let sdk = aws::sdk_config(&config.aws).await;
    let source = SsmSource::polling(&sdk, &config.source.parameter);
    let store = S3Store::new(aws::s3_client(&sdk, &config.aws), &config.artifact.bucket);
    let services = Systemd::new(config.service.restart_timeout);
    let probe = match &config.health.url {
        Some(url) => {
            let per_request = config
                .health
                .interval
                .max(std::time::Duration::from_secs(2));
            Some(HttpProbe::new(url, per_request)?)
        }
        None => None,
    };
    let webhook = (config.notify.webhook_url.as_deref())
        .map(crate::webhook::Webhook::new)
        .transpose()?;
    // Asked only when a rollout or [fleet] needs the instance id.
    let imds = aws::imds_client(&sdk, &config.aws)
        .map_err(|e| crate::fleet::IdentityError::Unreachable(e).to_string())?;
    let identity = aws::identity_from(imds.clone());
    let balancer = (config.loadbalancer.is_some()).then(|| aws::Elb::new(&sdk));
    let scaling = (config.autoscaling.as_ref())
        .map(|autoscaling| aws::Scaling::new(&sdk, imds, autoscaling.group.clone()));
    let outside = Outside {
        source,
        store,
        services,
        probe,
        balancer,
        scaling,
    };
    let agent = Agent::new(config, outside, mode).with_identity(identity);
    Ok(match webhook {
        Some(webhook) => agent.with_webhook(webhook),
        None => agent,
    })
}

/// How long `drover once` waits for webhook notices still being sent before it exits.
const NOTICE_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

async fn once(config: Config) -> Result<ExitCode, String> {
    let mut agent = build_agent(config, Mode::Once).await?;
    let outcome = agent.pass().await;
    agent.flush_notices(NOTICE_GRACE).await;
    Ok(if outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    })
}

async fn rollback(config: Config) -> Result<ExitCode, String> {
    let mut agent = build_agent(config, Mode::Once).await?;
    let healthy = agent.rollback().await.map_err(|e| e.to_string())?;
    agent.flush_notices(NOTICE_GRACE).await;
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    })
}

async fn run(config: Config) -> Result<ExitCode, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let poll_interval = config.source.poll_interval;
    let mut agent = build_agent(config, Mode::Daemon).await?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    if let Some(every) = notify::watchdog_interval() {
        tokio::spawn(async move {
            loop {
                notify::watchdog();
                tokio::time::sleep(every).await;
            }
        });
    }
    notify::ready();
    notify::status("polling");
    // An instance already running a release joins the fleet's polling at a random point of the
    // interval, so that restarting drover everywhere at once is not a burst on the API; a fresh
    // one, or one with a switch to undo, starts at once.
    if agent.settled() {
        let first = poll_interval.mul_f64(plan::random_unit());
        tokio::select! {
            _ = tokio::time::sleep(first) => {}
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
            _ = int.recv() => return Ok(ExitCode::SUCCESS),
        }
    }
    let mut backoff = plan::Backoff::default();
    let mut first = true;
    loop {
        // A stop request cancels a pass midway: the switch-in-flight record brings the next
        // start back to a good release.
        let outcome = tokio::select! {
            o = agent.pass() => o,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        // Start-up (the config, the SDK's set-up, the first pass) is done: what it mapped goes
        // back, as after each deploy (memory.rs).
        if std::mem::take(&mut first) {
            crate::memory::give_back();
        }
        notify::status(&agent.status_line(outcome));
        backoff.record(match outcome {
            Outcome::Throttled => plan::Poll::Throttled,
            Outcome::Retry => plan::Poll::Failed,
            _ => plan::Poll::Answered,
        });
        let delay = backoff.delay(poll_interval, plan::random_unit());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notify::stopping();
    agent.flush_notices(std::time::Duration::from_secs(2)).await;
    Ok(ExitCode::SUCCESS)
}
