//! Renders the cloud-init user-data that installs drover on an instance
//! (`cloud-init/user-data.yaml.in`, embedded): where the binary comes from and its pinned digest,
//! the agent's config, the repository's `systemd/drover.service` with the drop-in that opens the
//! config's paths in its sandbox ([`crate::sandbox`]), and any extra files (credentials, the
//! app's unit, a CA for the download). `drover user-data` prints it.
//!
//! Template conventions: lines starting with `##` are notes for template readers and are dropped;
//! a marker alone on its line (`@DROVER_CONFIG@`) is a block, replaced by a text indented to the
//! marker's column; other markers are replaced inline by values checked to be safe in a quoted
//! YAML string.

use std::path::Path;

use crate::config::{self, Config};

/// The user-data template, as shipped.
pub const TEMPLATE: &str = include_str!("../../../cloud-init/user-data.yaml.in");

/// The agent's unit, as shipped.
pub const DROVER_SERVICE: &str = include_str!("../../../systemd/drover.service");

/// Where the install script looks for the CAs of a private download server.
pub const DOWNLOAD_CA_PATH: &str = "/etc/drover/download-ca.pem";

/// Where unit files given to the renderer are written.
const UNIT_DIR: &str = "/etc/systemd/system";

mod pins;
pub use pins::{pair, Arch, Pin};
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserDataError {
    #[error("source {given:?}: {reason}")]
    Source { given: String, reason: String },
    #[error("sha256 {0:?} is not 64 lowercase hex digits")]
    Sha256(String),
    #[error("{what} {value:?} cannot go into a quoted YAML string (empty, quote, backslash or control character)")]
    Unquotable { what: String, value: String },
    #[error("write_files path {0:?} is not absolute")]
    RelativePath(String),
    #[error("{0}: a YAML literal block cannot start with an indented line")]
    IndentedBlock(String),
    #[error("{0:?} is not a systemd unit name")]
    UnitName(String),
    #[error("download CA: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")]
    NotPem,
    #[error("user-data template: no value for {marker} in line {line:?}")]
    UnknownMarker { marker: String, line: String },
    #[error("generated config: {0}")]
    Config(String),
    /// The config given for the instance does not load.
    #[error("{0}")]
    InstanceConfig(String),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("{0:?} is not an architecture drover is built for (x86_64, aarch64)")]
    Arch(String),
    #[error("{0}")]
    Pin(String),
}

/// A file for cloud-init's `write_files`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFile {
    /// Absolute path on the instance.
    pub path: String,
    /// Octal mode, e.g. `0o600`.
    pub mode: u32,
    pub content: String,
}

/// What one instance's user-data says.
#[derive(Debug, Clone, Default)]
pub struct UserData {
    /// The binary of each architecture, and its digest: the instance installs the one its
    /// `uname -m` names, and nothing on another architecture.
    pub binaries: Vec<Pin>,
    /// The text of `/etc/drover/config.toml`.
    pub config_toml: String,
    /// More files to write before drover is installed.
    pub extra_files: Vec<WriteFile>,
    /// Units to enable (not start) once drover is installed: the app's, so that they come back
    /// after a reboot. Their files come with the image or in `extra_files`.
    pub enable_units: Vec<String>,
    /// PEM CAs that the https download trusts instead of the system's (a private server).
    pub download_ca: Option<String>,
}

impl UserData {
    /// The filled-in template: a `#cloud-config` document.
    pub fn render(&self) -> Result<String, UserDataError> {
        let binaries = pins::block(&self.binaries)?;
        let config_path = Path::new(config::DEFAULT_PATH);
        let config = Config::parse(&self.config_toml, config_path)
            .map_err(|e| UserDataError::InstanceConfig(e.to_string()))?;
        let paths = crate::sandbox::drop_in(&config, config_path)?;
        let mut files = self.extra_files.clone();
        if let Some(pem) = &self.download_ca {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(UserDataError::NotPem);
            }
            files.push(WriteFile {
                path: DOWNLOAD_CA_PATH.into(),
                mode: 0o644,
                content: pem.clone(),
            });
        }
        let extra = files
            .iter()
            .map(write_file_entry)
            .collect::<Result<String, _>>()?;
        let mut units = String::new();
        for unit in &self.enable_units {
            if !config::is_unit_name(unit) {
                return Err(UserDataError::UnitName(unit.clone()));
            }
            units.push_str(&format!("- \"{unit}\"\n"));
        }
        let blocks = [
            ("DROVER_CONFIG", self.config_toml.as_str()),
            ("DROVER_SERVICE", DROVER_SERVICE),
            ("DROVER_PATHS", paths.as_str()),
            ("EXTRA_WRITE_FILES", extra.as_str()),
            ("APP_UNITS", units.as_str()),
            ("DROVER_BINARIES", binaries.as_str()),
        ];
        fill(TEMPLATE, &blocks, &[])
    }
}

/// A unit file to install with the user-data: written to `/etc/systemd/system/NAME` and enabled.
pub fn unit_file(name: &str, content: String) -> Result<WriteFile, UserDataError> {
    if !config::is_unit_name(name) {
        return Err(UserDataError::UnitName(name.into()));
    }
    Ok(WriteFile {
        path: format!("{UNIT_DIR}/{name}"),
        mode: 0o644,
        content,
    })
}

/// What `drover user-data` asks for when it writes the config itself; `None` takes the SPEC's
/// default.
#[derive(Debug, Clone, Default)]
pub struct ConfigFlags {
    pub bucket: String,
    pub parameter: Option<String>,
    pub key: Option<String>,
    pub units: Option<Vec<String>>,
    pub health_url: Option<String>,
}

impl ConfigFlags {
    /// A `config.toml` that says every flag's value (the defaults written out, so that the
    /// instance's file shows what it does), checked by the agent's own parser.
    pub fn to_toml(&self) -> Result<String, UserDataError> {
        let quote = |s: &str| toml::Value::from(s).to_string();
        let units = self
            .units
            .clone()
            .unwrap_or_else(|| vec!["app.service".into()]);
        let units: Vec<String> = units.iter().map(|u| quote(u)).collect();
        let mut text = format!(
            "[source]\nparameter = {}\n\n[artifact]\nbucket = {}\nkey = {}\n\n[service]\nunits = [{}]\n",
            quote(self.parameter.as_deref().unwrap_or("/app/current-version")),
            quote(&self.bucket),
            quote(self.key.as_deref().unwrap_or("releases/{version}.tar.gz")),
            units.join(", "),
        );
        if let Some(url) = &self.health_url {
            text.push_str(&format!("\n[health]\nurl = {}\n", quote(url)));
        }
        Config::parse(&text, Path::new("(generated from the flags)"))
            .map_err(|e| UserDataError::Config(e.to_string()))?;
        Ok(text)
    }
}

/// Fills `template`: see the module comment. Every marker in it must have a value.
pub fn fill(
    template: &str,
    blocks: &[(&str, &str)],
    inline: &[(&str, &str)],
) -> Result<String, UserDataError> {
    for (name, value) in inline {
        check_inline(name, value)?;
    }
    let mut out = String::new();
    for line in template.lines() {
        if line.starts_with("##") {
            continue;
        }
        let indent = &line[..line.len() - line.trim_start().len()];
        let block = blocks
            .iter()
            .find(|(name, _)| line.trim() == format!("@{name}@"));
        match block {
            Some((name, text)) => out.push_str(&indent_block(name, text, indent)?),
            None => {
                out.push_str(&fill_line(line, inline)?);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// One line with its inline markers replaced, in one pass (a value is never searched for
/// markers itself).
fn fill_line(line: &str, inline: &[(&str, &str)]) -> Result<String, UserDataError> {
    let mut out = String::new();
    let mut rest = line;
    while let Some((before, marker, after)) = next_marker(rest) {
        let name = &marker[1..marker.len() - 1];
        let value = inline
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| UserDataError::UnknownMarker {
                marker: marker.into(),
                line: line.into(),
            })?;
        out.push_str(before);
        out.push_str(value);
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

/// The first `@NAME@` marker in `text` (NAME: uppercase letters, digits, `_`), as
/// (text before, marker, text after).
fn next_marker(text: &str) -> Option<(&str, &str, &str)> {
    let mut from = 0;
    while let Some(start) = text[from..].find('@').map(|i| from + i) {
        let rest = &text[start + 1..];
        let end = rest.find('@')?;
        let name = &rest[..end];
        let is_marker = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if is_marker {
            let close = start + 1 + end + 1;
            return Some((&text[..start], &text[start..close], &text[close..]));
        }
        from = start + 1;
    }
    None
}

/// `text` with every non-empty line prefixed by `indent`, ending in exactly one newline (what a
/// YAML literal block `|` gives back); empty text gives nothing.
fn indent_block(name: &str, text: &str, indent: &str) -> Result<String, UserDataError> {
    let text = text.trim_end_matches('\n');
    if text.is_empty() {
        return Ok(String::new());
    }
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if first.starts_with([' ', '\t']) {
        return Err(UserDataError::IndentedBlock(name.into()));
    }
    let mut out = String::new();
    for line in text.lines() {
        if !line.is_empty() {
            out.push_str(indent);
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
}

fn write_file_entry(file: &WriteFile) -> Result<String, UserDataError> {
    check_inline("write_files path", &file.path)?;
    if !file.path.starts_with('/') {
        return Err(UserDataError::RelativePath(file.path.clone()));
    }
    let mut entry = format!(
        "- path: \"{}\"\n  owner: root:root\n  permissions: '{:04o}'\n",
        file.path, file.mode
    );
    let content = indent_block(&file.path, &file.content, "    ")?;
    if content.is_empty() {
        entry.push_str("  content: \"\"\n");
    } else {
        entry.push_str("  content: |\n");
        entry.push_str(&content);
    }
    Ok(entry)
}

/// An absolute path on the image or an https URL; nothing that a YAML string or the install
/// script's argument could misread.
fn check_source(source: &str) -> Result<(), UserDataError> {
    let bad = |reason: &str| UserDataError::Source {
        given: source.into(),
        reason: reason.into(),
    };
    check_inline("source", source)?;
    if source.chars().any(char::is_whitespace) {
        return Err(bad("contains whitespace"));
    }
    if source.starts_with('/') {
        return Ok(());
    }
    if let Some(rest) = source.strip_prefix("https://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() {
            return Err(bad("no host in the URL"));
        }
        return Ok(());
    }
    if source.to_ascii_lowercase().starts_with("http://") {
        return Err(bad(
            "plain http is refused: the binary must come over https",
        ));
    }
    Err(bad(
        "expected an https:// URL or an absolute path on the image",
    ))
}

fn check_sha256(digest: &str) -> Result<(), UserDataError> {
    let ok = digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(UserDataError::Sha256(digest.into()))
    }
}

fn check_inline(what: &str, value: &str) -> Result<(), UserDataError> {
    let unsafe_char = |c: char| c.is_control() || c == '"' || c == '\\';
    if value.is_empty() || value.chars().any(unsafe_char) {
        return Err(UserDataError::Unquotable {
            what: what.into(),
            value: value.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
