//! `drover publish`: pack a release, check it as an instance will, and upload it with its
//! digest (and signature). Whatever an instance would refuse is refused here, before anything
//! is uploaded: a published version is immutable, so a bad upload burns its version number.

use std::io::{Read, Write};
use std::path::Path;

use crate::aws::S3Store;
use crate::config::Config;
use crate::digest::Sha256Digest;
use crate::reach::Fix;
use crate::store::StoreError;
use crate::unpack::compression::Format;
use crate::version::Version;

/// What to publish, from the command line.
pub struct Publish<'a> {
    pub version: &'a str,
    /// A directory (packed as `format`), or a ready `.tar.gz` or `.tar.zst`.
    pub path: &'a Path,
    /// A minisign secret key file to sign with.
    pub sign: Option<&'a Path>,
    pub format: Format,
    /// Check everything, upload nothing.
    pub dry_run: bool,
}

/// Packs, checks and uploads the release and its `.sha256` under the configured key, and with
/// a key its `.minisig`. The tarball goes last, so that an agent that sees it also finds its
/// digest and signature. Returns what it did, in a line.
pub async fn publish(
    config: &Config,
    store: &S3Store,
    job: &Publish<'_>,
) -> Result<String, String> {
    let version = Version::parse(job.version).map_err(|e| e.to_string())?;
    let artifact = &config.artifact;
    // Read before anything is uploaded: a bad key uploads nothing.
    let secret = job
        .sign
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            crate::signature::SecretKey::parse(&text).map_err(|e| format!("{}: {e}", p.display()))
        })
        .transpose()?;
    if secret.is_none() && !artifact.trusted_keys.is_empty() {
        return Err(format!(
            "refusing to publish {version}: instances trust only signed releases ([artifact] \
             trusted_keys), and no --sign KEY was given"
        ));
    }
    let key = artifact.key_for(&version);
    let url = format!("s3://{}/{key}", store.bucket());

    let scratch = tempfile::Builder::new()
        .prefix("drover-publish")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let tarball = if job.path.is_dir() {
        let out = scratch.path().join("release.tar");
        pack_dir(job.path, &out, job.format)?;
        out
    } else if job.path.is_file() {
        // A copy, so that what is checked, hashed and uploaded is one file however the
        // original changes meanwhile.
        let copy = scratch.path().join("release.tar");
        std::fs::copy(job.path, &copy).map_err(|e| format!("{}: {e}", job.path.display()))?;
        copy
    } else {
        return Err(format!(
            "{} is neither a directory nor a file",
            job.path.display()
        ));
    };
    let refuse = |why: String| {
        format!(
            "refusing to publish {version}: {}: {why}; an instance would reject it, so nothing \
             was uploaded",
            job.path.display()
        )
    };
    // The instance's own checks: the size limit, then the unpack with its limits.
    let size = std::fs::metadata(&tarball)
        .map_err(|e| format!("{}: {e}", tarball.display()))?
        .len();
    if size > artifact.max_size {
        return Err(refuse(format!(
            "{size} bytes, over [artifact] max_size ({} bytes)",
            artifact.max_size
        )));
    }
    let check = scratch.path().join("check");
    std::fs::create_dir(&check).map_err(|e| format!("{}: {e}", check.display()))?;
    let limits = crate::unpack::Limits {
        max_unpacked_size: artifact.max_unpacked_size,
        max_entries: artifact.max_entries,
    };
    let unpacked = crate::unpack::unpack(&tarball, &check, &limits)
        .map_err(|e| refuse(e.to_string()))?
        .bytes;
    let (digest, prehash) = hash_file(&tarball, secret.is_some())?;
    let signature = match (&secret, &prehash) {
        (Some(secret), Some(prehash)) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let binding = artifact.binding(&version);
            let text = secret
                .sign(prehash, &binding, now)
                .map_err(|e| e.to_string())?;
            // Verified as an instance will, against the trusted keys it has, if any.
            if !artifact.trusted_keys.is_empty() {
                crate::signature::Signature::parse(&text)
                    .and_then(|s| {
                        s.verify(&artifact.trusted_keys, prehash, &binding)
                            .map(|_| ())
                    })
                    .map_err(|e| {
                        refuse(format!(
                            "its signature by key {} does not verify against [artifact] \
                             trusted_keys: {e}",
                            secret.key_id_hex()
                        ))
                    })?;
            }
            Some((text, secret.key_id_hex()))
        }
        _ => None,
    };

    // The bucket itself, before the object: a missing bucket or another region says so.
    let prefix = artifact.prefix();
    store
        .check_bucket(prefix)
        .await
        .map_err(|e| e.explained())?;
    if store.exists(&key).await.map_err(|e| e.explained())? {
        return Err(format!(
            "{url} already exists; published versions are never overwritten"
        ));
    }
    let signed = signature
        .as_ref()
        .map(|(_, id)| format!(", signed by key {id}"))
        .unwrap_or_default();
    let what = format!("{url} sha256 {digest}{signed}, {size} bytes, {unpacked} bytes unpacked");
    if job.dry_run {
        return Ok(format!(
            "would publish {what}; nothing uploaded (--dry-run)"
        ));
    }
    // Each upload creates or fails: a publish of the same version that got there first (a CI
    // job run twice) stops this one, and no tarball lands beside another run's digest.
    let raced = |e: StoreError| match e {
        StoreError::Exists { .. } => format!(
            "{e}: another publish of {version} got there first; published versions are never \
             overwritten"
        ),
        e => e.explained(),
    };
    let file_name = key.rsplit('/').next().unwrap_or(&key);
    store
        .put_bytes_new(
            &format!("{key}.sha256"),
            format!("{digest}  {file_name}\n").into_bytes(),
        )
        .await
        .map_err(raced)?;
    if let Some((text, _)) = signature {
        store
            .put_bytes_new(&format!("{key}.minisig"), text.into_bytes())
            .await
            .map_err(raced)?;
    }
    store
        .put_file_new(&key, &tarball, Some(unpacked))
        .await
        .map_err(raced)?;
    Ok(format!("published {what}"))
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
pub(super) fn hash_file(
    path: &Path,
    prehash: bool,
) -> Result<(Sha256Digest, Option<[u8; 64]>), String> {
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
