//! The operator's side: `publish` packs and uploads a release with its digest, `promote` puts a
//! version into the parameter, `status` reads the instance's state from disk, `unpack` checks an
//! artifact as an instance would.

use std::io::{Read, Write};
use std::path::Path;

use crate::aws::{S3Store, SsmSource};
use crate::config::Config;
use crate::digest::Sha256Digest;
use crate::releases::Layout;
use crate::state::{State, StateFile};
use crate::unpack::compression::Format;
use crate::version::Version;

/// Packs `path` (a directory, as `format`; or a ready `.tar.gz` or `.tar.zst`) and uploads it and its `.sha256` under the
/// configured key, and with `sign` (a minisign secret key file) its `.minisig`. The tarball goes
/// last, so that an agent that sees it also finds its digest and signature. Refuses to overwrite
/// an existing version: published releases are immutable.
pub async fn publish(
    config: &Config,
    store: &S3Store,
    version: &str,
    path: &Path,
    sign: Option<&Path>,
    format: Format,
) -> Result<String, String> {
    let version = Version::parse(version).map_err(|e| e.to_string())?;
    // Read before anything is uploaded: a bad key uploads nothing.
    let secret = sign
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            crate::signature::SecretKey::parse(&text).map_err(|e| format!("{}: {e}", p.display()))
        })
        .transpose()?;
    let key = config.artifact.key_for(&version);
    let url = format!("s3://{}/{key}", store.bucket());
    if store.exists(&key).await.map_err(|e| e.to_string())? {
        return Err(format!(
            "{url} already exists; published versions are never overwritten"
        ));
    }
    let scratch = tempfile::Builder::new()
        .prefix("drover-publish")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let tarball = if path.is_dir() {
        let out = scratch.path().join("release.tar");
        pack_dir(path, &out, format)?;
        out
    } else if path.is_file() {
        path.to_owned()
    } else {
        return Err(format!(
            "{} is neither a directory nor a file",
            path.display()
        ));
    };
    let (digest, prehash) = hash_file(&tarball, secret.is_some())?;
    let unpacked = unpacked_size(&tarball)?;
    let file_name = key.rsplit('/').next().unwrap_or(&key);
    store
        .put_bytes(
            &format!("{key}.sha256"),
            format!("{digest}  {file_name}\n").into_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut signed = String::new();
    if let (Some(secret), Some(prehash)) = (&secret, &prehash) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let text = secret
            .sign(prehash, &config.artifact.binding(&version), now)
            .map_err(|e| e.to_string())?;
        store
            .put_bytes(&format!("{key}.minisig"), text.into_bytes())
            .await
            .map_err(|e| e.to_string())?;
        signed = format!(", signed by key {}", secret.key_id_hex());
    }
    store
        .put_file(&key, &tarball, Some(unpacked))
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "published {url} sha256 {digest}{signed}, {unpacked} bytes unpacked"
    ))
}

/// The sum of the archive's file sizes, announced with the object so that instances can check
/// for room before they download it (`x-amz-meta-unpacked-size`).
fn unpacked_size(path: &Path) -> Result<u64, String> {
    let bad = |e: std::io::Error| format!("{}: not a readable tar archive: {e}", path.display());
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let decoder = crate::unpack::compression::Decoder::new(std::io::BufReader::new(file))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut archive = tar::Archive::new(decoder);
    let mut total = 0u64;
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        if entry.header().entry_type().is_file() {
            total = total.saturating_add(entry.header().size().map_err(bad)?);
        }
    }
    Ok(total)
}

/// Packs `dir` into `out` as a tar stream compressed with `format`.
fn pack_dir(dir: &Path, out: &Path, format: Format) -> Result<(), String> {
    let failed = |e: std::io::Error| format!("{}: {e}", out.display());
    let file = std::io::BufWriter::new(std::fs::File::create(out).map_err(failed)?);
    let mut w = match format {
        Format::Gzip => {
            let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
            tar_dir(dir, gz)?.finish().map_err(failed)?
        }
        Format::Zstd => {
            let zst = crate::unpack::compression::zstd_writer(file).map_err(failed)?;
            tar_dir(dir, zst)?.finish().map_err(failed)?
        }
    };
    w.flush().map_err(failed)
}

/// `dir` as a tar stream into `w`: deterministic headers, symlinks kept as links.
fn tar_dir<W: Write>(dir: &Path, w: W) -> Result<W, String> {
    let packing = |e: std::io::Error| format!("packing {}: {e}", dir.display());
    let mut tar = tar::Builder::new(w);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_dir_all(".", dir).map_err(packing)?;
    tar.into_inner().map_err(packing)
}

/// The file's SHA-256, and with `prehash` its BLAKE2b-512 (what a minisign signature covers).
fn hash_file(path: &Path, prehash: bool) -> Result<(Sha256Digest, Option<[u8; 64]>), String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut digests = crate::fetch::Digests::new(prehash);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(digests.finish()),
            Ok(n) => digests.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
}

/// Puts `version` into the parameter, with `rollout` (its JSON, docs/FLEET.md) as a staged
/// rollout when given; returns the parameter's new version number.
pub async fn promote(
    source: &SsmSource,
    version: &str,
    rollout: Option<&str>,
) -> Result<i64, String> {
    let value = promote_value(version, rollout)?;
    source.put(&value).await.map_err(|e| e.to_string())
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
        Err(e) if version.is_none() => return Err(e.to_string()),
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
    // 32 at a time: a fleet of 10,000 is 10,000 small GETs. Kept in the listing's order, which
    // is the instance ids'.
    let mut read: Vec<Option<crate::fleet::Report>> = vec![None; keys.len()];
    let mut keys = keys.into_iter().enumerate();
    let mut reading = tokio::task::JoinSet::new();
    loop {
        while reading.len() < 32 {
            let Some((i, key)) = keys.next() else { break };
            let store = store.clone();
            reading.spawn(async move {
                let report = match crate::store::get_small(&store, &key, 64 << 10).await {
                    Ok(body) => serde_json::from_slice::<crate::fleet::Report>(&body)
                        .map_err(|e| format!("{key}: {e}")),
                    Err(e) => Err(e.to_string()),
                };
                (i, report)
            });
        }
        match reading.join_next().await {
            None => break,
            Some(Ok((i, Ok(report)))) => read[i] = Some(report),
            Some(Ok((_, Err(e)))) => eprintln!("drover: skipping a status object: {e}"),
            Some(Err(e)) => return Err(format!("reading status objects: {e}")),
        }
    }
    let good: Vec<crate::fleet::Report> = read.into_iter().flatten().collect();
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

/// What `drover status` shows, read from disk only.
#[derive(serde::Serialize)]
pub struct Status {
    pub current: Option<String>,
    pub good: Option<String>,
    pub previous: Option<String>,
    pub pending: Option<String>,
    pub last: Option<crate::state::Record>,
    pub failed: Vec<crate::state::Request>,
    pub releases: Vec<String>,
    /// `[environment]`: the variables of the last good environment file as `NAME@version`
    /// (names and parameter versions only, never values).
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

impl Status {
    pub fn render(&self) -> String {
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let mut out = format!(
            "current:  {}\ngood:     {}\nprevious: {}\n",
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
