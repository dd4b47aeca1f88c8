//! The commands that need no AWS: `unpack` (an artifact checked as an instance would) and
//! `user-data` (text for another machine).

use std::process::ExitCode;

use crate::config::{self, Config};
use crate::operator;
use crate::userdata::{self, ConfigFlags, UserData};

use super::args::{UnpackArgs, UserDataArgs};
use super::{BAD_CONFIG, FAILED};

/// `drover unpack`: bad flags or an unreadable config are usage errors; a rejected archive fails.
pub(super) fn unpack(args: &UnpackArgs, config_path: &std::path::Path) -> ExitCode {
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
pub(super) fn user_data(args: &UserDataArgs) -> ExitCode {
    match render_user_data(args) {
        Ok(text) => write_stdout("user-data", &text),
        Err(e) => {
            eprintln!("drover user-data: {e}");
            ExitCode::from(BAD_CONFIG)
        }
    }
}

/// Prints what `drover COMMAND` rendered; a closed or full stdout fails the command.
pub(super) fn write_stdout(command: &str, text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover {command}: cannot write to stdout: {e}");
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
