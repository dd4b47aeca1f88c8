//! The command line: parse, load the config, build the real clients, run, pick the exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::aws::{self, S3Store, SsmSource};
use crate::config::{self, Config};
use crate::health::HttpProbe;
use crate::reconcile::{Agent, Mode, Outcome};
use crate::systemd::Systemd;
use crate::{logging, notify, operator, plan};

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
    /// Pack PATH (a directory or a .tar.gz) and upload it with its .sha256.
    Publish {
        #[arg(long)]
        version: String,
        path: PathBuf,
    },
    /// Put VERSION into the parameter.
    Promote { version: String },
    /// Check config, credentials, parameter, artifact, units, disk space; say what to fix.
    Doctor,
}

/// Exit statuses (SPEC: Command line).
const FAILED: u8 = 1;
const BAD_CONFIG: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
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
        Command::Publish { version, path } => {
            let sdk = aws::sdk_config(&config.aws).await;
            let store = S3Store::new(aws::s3_client(&sdk, &config.aws), &config.artifact.bucket);
            operator::publish(&config, &store, &version, &path)
                .await
                .map(|line| {
                    println!("{line}");
                    ExitCode::SUCCESS
                })
        }
        Command::Promote { version } => {
            let sdk = aws::sdk_config(&config.aws).await;
            let source = SsmSource::new(&sdk, &config.source.parameter);
            operator::promote(&source, &version).await.map(|n| {
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

type RealAgent = Agent<SsmSource, S3Store, Systemd, HttpProbe>;

async fn build_agent(config: Config, mode: Mode) -> Result<RealAgent, String> {
    let sdk = aws::sdk_config(&config.aws).await;
    let source = SsmSource::new(&sdk, &config.source.parameter);
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
    Ok(Agent::new(config, source, store, services, probe, mode))
}

async fn once(config: Config) -> Result<ExitCode, String> {
    let mut agent = build_agent(config, Mode::Once).await?;
    let outcome = agent.reconcile().await;
    Ok(if outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    })
}

async fn rollback(config: Config) -> Result<ExitCode, String> {
    let mut agent = build_agent(config, Mode::Once).await?;
    Ok(if agent.rollback().await? {
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
    let mut failures: u32 = 0;
    loop {
        // A stop request cancels a pass midway: the switch-in-flight record brings the next
        // start back to a good release.
        let outcome = tokio::select! {
            o = agent.reconcile() => o,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        notify::status(&agent.status_line(outcome));
        failures = if outcome == Outcome::Retry {
            failures.saturating_add(1)
        } else {
            0
        };
        let delay = plan::next_delay(poll_interval, failures, plan::random_unit());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notify::stopping();
    Ok(ExitCode::SUCCESS)
}
