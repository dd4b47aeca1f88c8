//! The command line: parse, load the config, build the real clients, run, pick the exit status.

use std::process::ExitCode;

use clap::Parser;

use crate::aws::{self, S3Store, SsmSource};
use crate::config::{self, Config};
use crate::unpack::compression::Format;
use crate::{fleet_history, history, logging, operator, pause};

mod args;
mod daemon;
mod local;

use args::{Cli, Command, FleetCommand, PackFormat};
use daemon::{once, rollback, run};
use local::{unpack, user_data};

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
    let flags = cli.command.layer();
    // Flags that stand in for a config file that is not there.
    if flags.is_some() && !cli.config.exists() {
        if cli.command.target().is_some_and(|t| t.bucket.is_none()) {
            eprintln!(
                "drover: no config at {} (--config, DROVER_CONFIG): give --bucket (and \
                 --parameter, --region as needed), or write the config",
                cli.config.display()
            );
            return ExitCode::from(BAD_CONFIG);
        }
        // Then the checks of publish and promote use the defaults: say so (trusted_keys and
        // the limits are the instances', and unknown here).
        if matches!(
            cli.command,
            Command::Publish { .. } | Command::Promote { .. }
        ) {
            eprintln!(
                "drover: note: no config at {}: checked with the default limits and without \
                 [artifact] trusted_keys; instances check with their own",
                cli.config.display()
            );
        }
    }
    let (config, layers) = match Config::load_layers(&cli.config, flags) {
        Ok(loaded) => loaded,
        // No other check runs on a config that is not to be trusted: it names the endpoints
        // the instance's credentials would be sent to.
        Err(e) if matches!(cli.command, Command::Doctor { .. }) => {
            let report = crate::doctor::config_failed(&e);
            match cli.command {
                Command::Doctor { json: true } => {
                    println!("{}", report.to_json(&config::Layers::default()))
                }
                _ => print!("{}", report.render()),
            }
            return ExitCode::from(BAD_CONFIG);
        }
        Err(e) => {
            logging::fatal(&e.to_string());
            return ExitCode::from(BAD_CONFIG);
        }
    };
    // The agent's unit may not let it write the config's directories: say so once, and stay
    // stopped (as for a bad config), rather than fail every pass.
    if matches!(cli.command, Command::Run | Command::Once) {
        if let Err(e) = crate::sandbox::check(&config) {
            logging::fatal(&e.to_string());
            return ExitCode::from(BAD_CONFIG);
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            logging::fatal(&format!("cannot start the runtime: {e}"));
            return ExitCode::from(FAILED);
        }
    };
    runtime.block_on(dispatch(cli.command, config, &layers, &cli.config))
}

async fn dispatch(
    command: Command,
    config: Config,
    layers: &config::Layers,
    config_path: &std::path::Path,
) -> ExitCode {
    let result = match command {
        Command::Doctor { json } => {
            let report = crate::doctor::run(&config, layers, config_path).await;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report.to_json(layers)).unwrap_or_default()
                );
            } else {
                print!("{}", report.render());
                // What drop-ins and flags made of the file, when they changed it.
                if layers.files.len() > 1 || layers.flags {
                    let merged = toml::to_string(&layers.merged).unwrap_or_default();
                    print!("merged config:\n{}", indent(&merged));
                }
            }
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(FAILED)
            })
        }
        Command::Run => run(config).await,
        Command::Once => once(config).await,
        Command::Status { json } => match operator::status(&config) {
            Err(e) => Err(e),
            Ok(mut s) => {
                let sdk = aws::sdk_config(&config.aws).await;
                let source = SsmSource::new(&sdk, &config.source.parameter);
                match operator::desired(&source).await {
                    Ok(desired) => s.desired = Some(desired),
                    Err(e) => s.desired_error = Some(e),
                }
                if json {
                    println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                } else {
                    print!("{}", s.render());
                }
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Rollback => rollback(config).await,
        Command::History { json, n } => printed(history::show(&config.agent.state_dir, n, json)),
        Command::Pause { until, reason } => printed(pause::here(&config, until, reason)),
        Command::Resume => printed(pause::resume_here(&config)),
        Command::Fleet(FleetCommand::History { version, json, .. }) => {
            printed(fleet_history::command(&config, &version, json).await)
        }
        Command::Publish {
            version,
            sign,
            format,
            dry_run,
            target: _,
            path,
        } => {
            let sdk = aws::sdk_config(&config.aws).await;
            let store = S3Store::new(&sdk, &config.aws, &config.artifact.bucket);
            let format = match format {
                PackFormat::Gzip => Format::Gzip,
                PackFormat::Zstd => Format::Zstd,
            };
            let job = operator::Publish {
                version: &version,
                path: &path,
                sign: sign.as_deref(),
                format,
                dry_run,
            };
            operator::publish(&config, &store, &job).await.map(|line| {
                println!("{line}");
                ExitCode::SUCCESS
            })
        }
        Command::UserData(args) => Ok(user_data(&args)),
        Command::SandboxPaths => Ok(match crate::sandbox::drop_in(&config, config_path) {
            Ok(text) => local::write_stdout("sandbox-paths", &text),
            Err(e) => {
                eprintln!("drover sandbox-paths: {e}");
                ExitCode::from(BAD_CONFIG)
            }
        }),
        Command::Unpack(args) => Ok(unpack(&args, config_path)),
        Command::Fleet(FleetCommand::Status { version, json, .. }) => {
            let sdk = aws::sdk_config(&config.aws).await;
            let store = S3Store::new(&sdk, &config.aws, &config.artifact.bucket);
            let source = SsmSource::new(&sdk, &config.source.parameter);
            operator::fleet_status(&config, &store, &source, version.as_deref())
                .await
                .map(|summary| {
                    if json {
                        let mut value = serde_json::to_value(&summary).unwrap_or_default();
                        if let Some(object) = value.as_object_mut() {
                            object.insert("schema".into(), 1.into());
                        }
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&value).unwrap_or_default()
                        );
                    } else {
                        print!("{}", summary.render());
                    }
                    ExitCode::SUCCESS
                })
        }
        Command::Promote {
            version,
            rollout,
            force,
            dry_run,
            target: _,
        } => {
            let sdk = aws::sdk_config(&config.aws).await;
            let source = SsmSource::new(&sdk, &config.source.parameter);
            let store = S3Store::new(&sdk, &config.aws, &config.artifact.bucket);
            let job = operator::Promote {
                version: &version,
                rollout: rollout.as_deref(),
                force,
                dry_run,
            };
            operator::promote(&config, &source, &store, &job)
                .await
                .map(|line| {
                    println!("{line}");
                    ExitCode::SUCCESS
                })
        }
    };
    result.unwrap_or_else(|e| {
        // An error that knows its fix (crate::reach::Fix) says it on a line of its own.
        match e.split_once("; fix: ") {
            Some((what, fix)) => logging::fatal(&format!("{what}\n  fix: {fix}")),
            None => logging::fatal(&e),
        }
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

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}
