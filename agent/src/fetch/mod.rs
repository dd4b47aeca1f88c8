//! Fetching a release: [`release`] runs steps 2 and 3 of the flow (digest, signature, download,
//! unpack, owner, sync, install) behind one call, and [`FetchFailure::disposition`] says whose
//! fault it is when it stops. The download itself, verified as it arrives, is [`download`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::Artifact;
use crate::events::{emit, Event, Fields};
use crate::fsutil::{IoContext, PathError};
use crate::metrics::{Phase, Timings};
use crate::releases::Layout;
use crate::store::{ArtifactStore, StoreError};
use crate::unpack::{self, Limits, UnpackError};
use crate::value::Desired;
use crate::{failpoint, owner};

mod download;
mod parallel;
mod parts;
mod space;
#[cfg(test)]
pub(crate) use download::tests;
pub use download::{
    download, expected_digest, expected_signature, verify_signature, Digests, Downloaded,
    FetchError, Transfer,
};

/// Why a fetch produced no release: the typed error of the stage that stopped it. What the loop
/// does about it is [`FetchFailure::disposition`], decided here, once.
#[derive(Debug, thiserror::Error)]
pub enum FetchFailure {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// The staging area, the owner's chown, the sync or the rename into `releases/`.
    #[error(transparent)]
    Disk(#[from] PathError),
    /// `[release] owner` names nobody (yet): cloud-init may still be creating the user.
    #[error("{0}")]
    Owner(String),
    #[error("unpack task: {0}")]
    Task(String),
}

impl crate::reach::Fix for FetchFailure {
    fn fix(&self) -> Option<String> {
        match self {
            FetchFailure::Fetch(FetchError::Store(e)) => e.fix(),
            _ => None,
        }
    }
}

/// What to do about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The object is not there (yet): an upload may still be on its way; poll at the normal pace.
    Wait,
    /// The network, the API or this machine: try again after a backoff.
    Retry,
    /// The artifact is bad: remember the request as failed.
    Reject,
}

impl FetchFailure {
    /// The one place that says whose fault a failure is: only what the artifact's content
    /// causes is a rejection; everything about the machine, the network or the API is retried.
    pub fn disposition(&self) -> Disposition {
        match self {
            FetchFailure::Fetch(FetchError::Store(StoreError::NotFound { .. })) => {
                Disposition::Wait
            }
            FetchFailure::Fetch(e) if e.is_artifact_fault() => Disposition::Reject,
            FetchFailure::Unpack(e) if e.is_artifact_fault() => Disposition::Reject,
            _ => Disposition::Retry,
        }
    }
}

/// What [`release`] works with besides the store.
pub struct Job<'a> {
    pub artifact: &'a Artifact,
    /// `[release] owner`, looked up at each fetch: the user may be created (by cloud-init, say)
    /// after drover starts, and until then there is no point in fetching.
    pub owner: Option<&'a str>,
    pub layout: &'a Layout,
    pub desired: &'a Desired,
    /// The deploy's journal fields, for the events of these steps.
    pub fields: &'a Fields<'a>,
}

/// Steps 2 and 3 of the flow, behind one call: the expected digest and signature, the download
/// (verified as the bytes arrive), the unpack, `[release] owner`'s chown, one sync, and the
/// rename into `releases/`. Whatever happens, nothing is left in the staging area. How long the
/// checks, the download and the unpack took goes to `timings`, for a fetch that fails too.
pub async fn release<S: ArtifactStore>(
    store: &S,
    job: &Job<'_>,
    timings: &mut Timings,
) -> Result<(), FetchFailure> {
    let staging = job.layout.new_staging("fetch", &job.desired.version)?;
    let result = fetch_into(store, job, &staging, timings).await;
    let _ = crate::tree::remove_tree(&staging);
    result
}

async fn fetch_into<S: ArtifactStore>(
    store: &S,
    job: &Job<'_>,
    staging: &Path,
    timings: &mut Timings,
) -> Result<(), FetchFailure> {
    let (desired, fields) = (job.desired, job.fields);
    let artifact = job.artifact;
    let key = artifact.key_for(&desired.version);
    // Looked up at each deploy, before the download: the user may be created (by cloud-init,
    // say) after drover starts, and until then there is no point in fetching.
    let owner = job
        .owner
        .map(owner::lookup)
        .transpose()
        .map_err(FetchFailure::Owner)?;
    let started = Instant::now();
    let checked = async {
        let expected =
            expected_digest(store, &key, desired.sha256, artifact.download_timeout).await?;
        // With trusted keys, the signature is read (and its key checked) before the download.
        let signature = match artifact.trusted_keys.is_empty() {
            true => None,
            false => Some(
                expected_signature(
                    store,
                    &key,
                    &artifact.trusted_keys,
                    artifact.download_timeout,
                )
                .await?,
            ),
        };
        let info = store.head(&key).await.map_err(FetchError::from)?;
        // Too large is the artifact's fault whatever the disk holds: refused before the space
        // check, which would otherwise retry it for ever on a disk it does not fit.
        if info.len > artifact.max_size {
            return Err(FetchError::TooLarge {
                key: key.clone(),
                limit: artifact.max_size,
            }
            .into());
        }
        let partial = job.layout.partial(&desired.version);
        job.layout.forget_partials_but(&desired.version)?;
        space::check(job.layout.root(), &key, &info, &partial, artifact)?;
        Ok::<_, FetchFailure>((expected, signature, info, partial))
    }
    .await;
    timings.since(Phase::Verify, started);
    let (expected, signature, info, partial) = checked?;
    let transfer = Transfer {
        key: &key,
        expected,
        max_size: artifact.max_size,
        timeout: artifact.download_timeout,
        prehash: signature.as_ref().is_some_and(|s| s.is_prehashed()),
        connections: artifact.download_connections,
        part_size: artifact.download_part_size,
    };
    if info.len > artifact.download_part_size {
        let parts = info.len.div_ceil(artifact.download_part_size);
        tracing::info!(target: "drover", event = crate::events::Event::DownloadStarted.as_str(), version = desired.version.as_str(), key = key.as_str(),
            bytes = info.len, parts, connections = artifact.download_connections,
            "Downloading s3://{}/{key}: {} bytes in {parts} parts over up to {} connections",
            artifact.bucket, info.len, artifact.download_connections);
    }
    let started = Instant::now();
    let downloaded = download(store, &transfer, &info, &partial).await;
    let took = started.elapsed();
    timings.add(Phase::Download, took);
    let downloaded = downloaded?;
    timings.downloaded(crate::metrics::Download {
        bytes: downloaded.len,
        fetched: downloaded.len.saturating_sub(downloaded.resumed),
        took,
    });
    // Verified: out of the downloads and into this deploy's staging directory.
    let tarball = staging.join("artifact");
    std::fs::rename(&partial.data, &tarball).at("rename", &tarball)?;
    let _ = std::fs::remove_file(&partial.record);
    let started = Instant::now();
    let signed_by = match &signature {
        None => String::new(),
        Some(sig) => {
            let signer = verify_signature(
                sig,
                &artifact.trusted_keys,
                &artifact.binding(&desired.version),
                &tarball,
                &downloaded,
            );
            timings.since(Phase::Verify, started);
            format!(", signed by key {}", signer?)
        }
    };
    let (digest, len) = (expected.to_string(), downloaded.len);
    let kept = match downloaded.resumed {
        0 => String::new(),
        n => format!(" ({n} of them kept from an interrupted download)"),
    };
    emit(
        Event::ArtifactVerified,
        &Fields {
            sha256: Some(&digest),
            ..*fields
        },
        &format!(
            "Verified s3://{}/{key}: {len} bytes{kept}, sha256 {digest}{signed_by}",
            artifact.bucket
        ),
    );
    failpoint::hit("after_download");

    // 3. Unpack on a blocking thread, so the watchdog keeps being fed.
    let started = Instant::now();
    let installed = unpack_and_install(job, staging, &tarball, owner).await;
    timings.since(Phase::Unpack, started);
    installed?;
    failpoint::hit("after_install");
    Ok(())
}

/// 3: unpacks the verified `tarball`, gives the files to `[release] owner`, syncs them, and
/// renames the result into `releases/`.
async fn unpack_and_install(
    job: &Job<'_>,
    staging: &Path,
    tarball: &Path,
    owner: Option<owner::Owner>,
) -> Result<(), FetchFailure> {
    let (desired, artifact) = (job.desired, job.artifact);
    let unpacked: PathBuf = staging.join("release");
    std::fs::create_dir(&unpacked).at("create directory", &unpacked)?;
    let limits = Limits {
        max_unpacked_size: artifact.max_unpacked_size,
        max_entries: artifact.max_entries,
    };
    let (src, dst) = (tarball.to_path_buf(), unpacked.clone());
    let (stats, given) = tokio::task::spawn_blocking(move || -> Result<_, FetchFailure> {
        let stats = unpack::unpack(&src, &dst, &limits)?;
        let given = owner.map(|o| crate::tree::give_tree(&dst, o)).transpose()?;
        // One flush for the files and their owner, before the rename makes them a release.
        crate::fsutil::sync_filesystem(&dst)?;
        Ok((stats, given))
    })
    .await
    .map_err(|e| FetchFailure::Task(e.to_string()))??;
    tracing::info!(
        target: "drover",
        event = crate::events::Event::Unpacked.as_str(),
        version = desired.version.as_str(),
        files = stats.files,
        dirs = stats.dirs,
        links = stats.links,
        bytes = stats.bytes,
        modes_stripped = stats.modes_stripped,
        writable_stripped = stats.writable_stripped,
        "Unpacked {}: {} files, {} directories, {} links, {} bytes{}",
        desired.version,
        stats.files,
        stats.dirs,
        stats.links,
        stats.bytes,
        unpack::stripped_note(&stats)
    );
    if let (Some(given), Some(spec)) = (given, job.owner) {
        tracing::info!(target: "drover", event = crate::events::Event::Unpacked.as_str(), version = desired.version.as_str(), owner = %spec,
            entries = given, "Gave {given} entries of {} to {spec}", desired.version);
    }
    let _ = std::fs::remove_file(tarball);
    failpoint::hit("after_unpack");
    job.layout.install(&unpacked, &desired.version)?;
    Ok(())
}

#[cfg(test)]
mod disposition_tests {
    use super::*;

    /// Whose fault a failure is, decided in one place: the artifact's content is rejected; a
    /// missing object is waited for; the machine, the network and a user not there yet are
    /// retried.
    #[test]
    fn dispositions() {
        use std::io;
        let not_found = FetchError::Store(StoreError::NotFound {
            bucket: "b".into(),
            key: "k".into(),
        });
        assert_eq!(
            FetchFailure::from(not_found).disposition(),
            Disposition::Wait
        );
        let too_large = FetchError::TooLarge {
            key: "k".into(),
            limit: 1,
        };
        assert_eq!(
            FetchFailure::from(too_large).disposition(),
            Disposition::Reject
        );
        let refused = UnpackError::Refused {
            entry: "l".into(),
            op: "create hard link",
            source: io::Error::from_raw_os_error(libc::EMLINK),
        };
        assert_eq!(
            FetchFailure::from(refused).disposition(),
            Disposition::Reject
        );
        let full = UnpackError::Refused {
            entry: "f".into(),
            op: "write",
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(FetchFailure::from(full).disposition(), Disposition::Retry);
        let disk = PathError {
            op: "create directory",
            path: "/opt/app/.staging/x".into(),
            source: io::Error::from_raw_os_error(libc::EIO),
        };
        assert_eq!(FetchFailure::from(disk).disposition(), Disposition::Retry);
        let owner = FetchFailure::Owner("release.owner \"app\": no user \"app\"".into());
        assert_eq!(owner.disposition(), Disposition::Retry);
        assert_eq!(owner.to_string(), "release.owner \"app\": no user \"app\"");
    }
}
