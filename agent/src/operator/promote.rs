//! `drover promote VERSION`: put a version into the parameter, once it is known that instances
//! can deploy it: its artifact and digest are in the bucket (and, with trusted keys, a
//! signature by one of them). Says what changes, from what to what.

use crate::aws::{S3Store, SsmSource};
use crate::config::Config;
use crate::reach::Fix;
use crate::source::{DesiredSource, SourceError};
use crate::store::StoreError;
use crate::version::Version;

/// What to promote, from the command line.
pub struct Promote<'a> {
    pub version: &'a str,
    /// A staged rollout, as JSON (docs/FLEET.md).
    pub rollout: Option<&'a str>,
    /// Promote even what is not (all) in the bucket.
    pub force: bool,
    /// Check and say what would change; change nothing.
    pub dry_run: bool,
}

/// Checks and puts the value; returns what changed (or would), in a line.
pub async fn promote(
    config: &Config,
    source: &SsmSource,
    store: &S3Store,
    job: &Promote<'_>,
) -> Result<String, String> {
    let value = promote_value(job.version, job.rollout)?;
    let version = Version::parse(job.version).map_err(|e| e.to_string())?;
    let parameter = &config.source.parameter;
    // What it replaces; with --force, a parameter that cannot be read does not stop the write.
    let before = match source.read().await {
        Ok(p) => Some(Ok(p)),
        Err(SourceError::NotFound { .. }) => None,
        Err(e) if job.force => Some(Err(e.explained())),
        Err(e) => return Err(e.explained()),
    };
    if !job.force {
        let missing = unpublished(config, store, &version).await?;
        if !missing.is_empty() {
            return Err(format!(
                "refusing to promote {version}: {}; publish it first (drover publish --version \
                 {version} PATH), or pass --force to promote it anyway. {parameter} is unchanged",
                missing.join(", ")
            ));
        }
    }
    let from = match &before {
        Some(Err(e)) => format!("unknown ({e})"),
        Some(Ok(p)) => format!(
            "{} (parameter version {})",
            crate::value::parse_value(&p.value)
                .map(|d| d.version.to_string())
                .unwrap_or_else(|_| format!("{:?}", p.value)),
            p.version
        ),
        None => "nothing (the parameter does not exist yet)".into(),
    };
    let how = match job.rollout {
        Some(rollout) => format!("rollout {rollout}"),
        None => "all instances at their next poll".into(),
    };
    if job.dry_run {
        return Ok(format!(
            "would change {parameter}: {from} -> {version}, {how}; unchanged (--dry-run)"
        ));
    }
    let n = source.put(&value).await.map_err(|e| e.explained())?;
    Ok(format!(
        "{parameter}: {from} -> {version} (parameter version {n}), {how}"
    ))
}

/// What of `version` an instance needs and the bucket lacks: the artifact, its digest, and
/// with `[artifact] trusted_keys` a signature by one of them. Each named by its URL and what is
/// wrong with it.
async fn unpublished(
    config: &Config,
    store: &S3Store,
    version: &Version,
) -> Result<Vec<String>, String> {
    let key = config.artifact.key_for(version);
    let url = |key: &str| format!("s3://{}/{key}", store.bucket());
    // The bucket first: a missing one, or one in another region, is not a missing object.
    let prefix = config.artifact.prefix();
    store
        .check_bucket(prefix)
        .await
        .map_err(|e| e.explained())?;
    let mut missing = Vec::new();
    for key in [key.clone(), format!("{key}.sha256")] {
        if !store.exists(&key).await.map_err(|e| e.explained())? {
            missing.push(format!("{} not found", url(&key)));
        }
    }
    let trusted = &config.artifact.trusted_keys;
    if !trusted.is_empty() {
        let sig = format!("{key}.minisig");
        match crate::store::get_small(store, &sig, 64 << 10).await {
            Ok(body) => {
                let text = String::from_utf8_lossy(&body);
                let binding = config.artifact.binding(version);
                let signer = crate::signature::Signature::parse(&text)
                    .and_then(|s| s.verify_comment(trusted, &binding).map(|_| ()));
                if let Err(e) = signer {
                    missing.push(format!("{}: {e}", url(&sig)));
                }
            }
            Err(StoreError::NotFound { .. }) => missing.push(format!(
                "{} not found, and instances trust only signed releases",
                url(&sig)
            )),
            Err(e) => return Err(e.explained()),
        }
    }
    Ok(missing)
}

/// The parameter value `drover promote` puts: the bare version, or a JSON object with the
/// rollout, checked as an instance will read it.
pub fn promote_value(version: &str, rollout: Option<&str>) -> Result<String, String> {
    Version::parse(version).map_err(|e| e.to_string())?;
    let Some(rollout) = rollout else {
        return Ok(version.to_owned());
    };
    let rollout: serde_json::Value =
        serde_json::from_str(rollout).map_err(|e| format!("--rollout is not JSON: {e}"))?;
    let value = serde_json::json!({ "version": version, "rollout": rollout }).to_string();
    crate::value::parse_value(&value).map_err(|e| format!("--rollout: {e}"))?;
    Ok(value)
}
