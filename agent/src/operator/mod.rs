//! The operator's side: `publish` packs and uploads a release with its digest, `promote` puts a
//! version into the parameter, `status` reads the instance's state from disk, `unpack` checks an
//! artifact as an instance would.

use std::path::Path;

use crate::aws::{S3Store, SsmSource};
use crate::config::Config;
use crate::digest::Sha256Digest;
use crate::reach::Fix;
use crate::releases::Layout;
use crate::state::{State, StateFile};
use crate::version::Version;

mod promote;
mod publish;
pub use promote::{promote, promote_value, Promote};
use publish::hash_file;
pub use publish::{publish, Publish};

/// `drover fleet status [VERSION]`: every instance's status object under `[fleet]
/// status_prefix`, summed up for `version` (default: the one the parameter asks for).
pub async fn fleet_status(
    config: &Config,
    store: &S3Store,
    source: &SsmSource,
    version: Option<&str>,
) -> Result<crate::fleet::Summary, String> {
    use crate::source::DesiredSource;
    use crate::store::ArtifactStore;
    let prefix = (config.fleet.status_prefix.as_deref())
        .ok_or("[fleet] status_prefix is not set in the config: instances write no status")?;
    // The request that asks for the version now, if one does: failures count per request.
    let asked = match source.read().await {
        Ok(p) => crate::value::parse_value(&p.value)
            .ok()
            .map(|d| (d.version, p.version)),
        Err(e) if version.is_none() => return Err(e.explained()),
        Err(_) => None,
    };
    let version = match (version, &asked) {
        (Some(v), _) => Version::parse(v).map_err(|e| e.to_string())?,
        (None, Some((v, _))) => v.clone(),
        (None, None) => {
            return Err(format!(
                "{} holds no valid version: name one (drover fleet status VERSION)",
                config.source.parameter
            ))
        }
    };
    let parameter_version = asked.filter(|(v, _)| *v == version).map(|(_, n)| n);
    let failures_counted = match parameter_version {
        Some(n) => Some(
            store
                .list_keys(
                    &crate::fleet::failures_prefix(prefix, version.as_str(), n),
                    usize::MAX,
                )
                .await
                .map_err(|e| e.to_string())?
                .len(),
        ),
        None => None,
    };
    let keys = store
        .list_keys(&crate::fleet::instances_prefix(prefix), usize::MAX)
        .await
        .map_err(|e| e.to_string())?;
    // In the listing's order, which is the instance ids'.
    let good = crate::fleet::read_reports(store, keys).await;
    let mut summary = crate::fleet::Summary::of(version.as_str(), parameter_version, &good);
    summary.failures_counted = failures_counted;
    if config.fleet.max_in_flight.is_some() {
        let now = std::time::SystemTime::now();
        let leases = crate::fleet::leases_prefix(prefix);
        let held = crate::lease::holders(store, &leases, now).await;
        summary.leases = Some(held.map_err(|e| e.to_string())?);
    }
    Ok(summary)
}

/// `drover unpack`: checks a local `.tar.gz` against `expected` (when given) and unpacks it
/// into the new directory `dest`, with the agent's own checks and `limits`: what an instance
/// would do with this artifact, without S3. On any failure `dest` is removed again.
pub fn unpack_local(
    archive: &Path,
    dest: &Path,
    expected: Option<Sha256Digest>,
    limits: &crate::unpack::Limits,
) -> Result<String, String> {
    let (actual, _) = hash_file(archive, false)?;
    if let Some(expected) = expected.filter(|e| *e != actual) {
        return Err(format!(
            "{}: sha256 mismatch: expected {expected}, got {actual}",
            archive.display()
        ));
    }
    std::fs::create_dir(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let unpacked = crate::unpack::unpack(archive, dest, limits)
        .map_err(|e| e.to_string())
        .and_then(|s| {
            crate::fsutil::sync_filesystem(dest)
                .map(|()| s)
                .map_err(|e| e.to_string())
        });
    match unpacked {
        Ok(s) => {
            Ok(format!(
            "{}: sha256 {actual}{}; unpacked into {}: {} files, {} directories, {} links, {} bytes",
            archive.display(),
            if expected.is_some() { " (verified)" } else { "" },
            dest.display(),
            s.files,
            s.dirs,
            s.links,
            s.bytes
        ))
        }
        Err(e) => {
            let _ = crate::tree::remove_tree(dest);
            Err(format!("{}: {e}", archive.display()))
        }
    }
}

/// What `drover status` shows: the state on disk, and what the parameter asks for now.
#[derive(serde::Serialize)]
pub struct Status {
    /// The version of this JSON's layout; a field changes meaning only with a new number.
    pub schema: u32,
    /// What the parameter asks for, read now; `None` when it could not be read
    /// (`desired_error` says why).
    pub desired: Option<Desired>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_error: Option<String>,
    pub current: Option<String>,
    pub good: Option<String>,
    pub previous: Option<String>,
    pub pending: Option<String>,
    /// As the state keeps it, with `at` in RFC 3339.
    #[serde(serialize_with = "last_with_rfc3339")]
    pub last: Option<crate::state::Record>,
    pub failed: Vec<crate::state::Request>,
    pub releases: Vec<String>,
    /// `[environment]`: the variables of the last good environment file as `NAME@version`
    /// (names and parameter versions only, never values). Left out without `[environment]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Vec<String>>,
    /// `[loadbalancer]`: target groups the instance left and is not back in yet (left out
    /// when empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub out_of_service: Vec<String>,
    /// `drover pause`: since, until and reason while a pause holds (left out otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<crate::pause::Pause>,
}

pub fn status(config: &Config) -> Result<Status, String> {
    let layout = Layout::new(&config.release.root);
    let state: State = StateFile::new(&config.agent.state_dir)
        .load()
        .map_err(|e| e.to_string())?;
    Ok(Status {
        schema: 1,
        desired: None,
        desired_error: None,
        current: layout.active().map_err(|e| e.to_string())?,
        good: state.good,
        previous: state.previous,
        pending: state.pending.map(|p| p.version),
        last: state.last,
        failed: state.failed,
        environment: state.environment,
        out_of_service: state.out_of_service,
        paused: crate::pause::PauseFile::new(&config.agent.state_dir)
            .in_force(std::time::SystemTime::now()),
        releases: layout
            .list()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(name, _)| name)
            .collect(),
    })
}

fn last_with_rfc3339<S: serde::Serializer>(
    last: &Option<crate::state::Record>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::Error;
    let Some(record) = last else {
        return s.serialize_none();
    };
    let mut shown = serde_json::to_value(record).map_err(S::Error::custom)?;
    let at = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(record.at));
    if let (Some(object), Some(at)) = (shown.as_object_mut(), at) {
        object.insert("at".into(), crate::rfc3339::format(at).into());
    }
    serde::Serialize::serialize(&shown, s)
}

/// The parameter's value as `drover status` shows it.
#[derive(serde::Serialize)]
pub struct Desired {
    /// The value as written (a version, or JSON with a rollout).
    pub value: String,
    /// The version in it, if it is valid.
    pub version: Option<String>,
    pub parameter_version: i64,
}

/// What the parameter asks for, within a few seconds: status must answer when AWS does not.
pub async fn desired(source: &SsmSource) -> Result<Desired, String> {
    use crate::source::DesiredSource;
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), source.read());
    match read.await {
        Err(_) => Err("no answer within 5 s".into()),
        Ok(Err(e)) => Err(e.explained()),
        Ok(Ok(p)) => Ok(Desired {
            version: crate::value::parse_value(&p.value)
                .ok()
                .map(|d| d.version.to_string()),
            value: p.value,
            parameter_version: p.version,
        }),
    }
}

impl Status {
    pub fn render(&self) -> String {
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let desired = match (&self.desired, &self.desired_error) {
            (Some(d), _) => format!(
                "{} (parameter version {})",
                d.version
                    .clone()
                    .unwrap_or_else(|| format!("{:?}, not a valid value", d.value)),
                d.parameter_version
            ),
            (None, Some(e)) => format!("? ({e})"),
            (None, None) => "-".into(),
        };
        let mut out = format!(
            "desired:  {desired}\ncurrent:  {}\ngood:     {}\nprevious: {}\n",
            or_none(&self.current),
            or_none(&self.good),
            or_none(&self.previous)
        );
        if let Some(p) = &self.pending {
            out += &format!("pending:  {p} (a switch was interrupted)\n");
        }
        if let Some(pause) = &self.paused {
            out += &format!("paused:   {}\n", pause.describe().escape_debug());
        }
        match &self.last {
            None => out += "last:     -\n",
            Some(last) => {
                let result = serde_json::to_value(last.result)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                out += &format!(
                    "last:     {result} {}{}{}\n",
                    last.version.as_deref().unwrap_or(""),
                    last.request
                        .as_ref()
                        .map(|r| format!(" (parameter version {})", r.parameter_version))
                        .unwrap_or_default(),
                    last.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
        }
        out += &format!("releases: {}\n", self.releases.join(" "));
        if !self.out_of_service.is_empty() {
            out += &format!("out of service in: {}\n", self.out_of_service.join(" "));
        }
        if let Some(vars) = &self.environment {
            out += &format!("environment: {}\n", vars.join(" "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promote_puts_the_bare_version_or_a_checked_rollout() {
        assert_eq!(promote_value("1.4.2", None).unwrap(), "1.4.2");
        let value = promote_value("2.0.0", Some(r#"{"duration":"30m"}"#)).unwrap();
        let desired = crate::value::parse_value(&value).unwrap();
        assert_eq!(desired.version.as_str(), "2.0.0");
        assert!(desired.rollout.is_some());
        assert!(promote_value("2.0.0", Some("{"))
            .unwrap_err()
            .contains("not JSON"));
        assert!(promote_value("2.0.0", Some(r#"{"durration":"1m"}"#))
            .unwrap_err()
            .contains("\"durration\""));
        assert!(promote_value("../x", None).is_err());
    }
}
