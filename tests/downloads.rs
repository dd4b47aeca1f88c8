//! Big artifacts (issue 16), through the real parts: the real `drover` (AWS SDK) against moto,
//! behind the fault proxy, which caps each connection's rate as S3 does and spoils single
//! parts. An artifact larger than one part comes in ranged GETs over several connections; a
//! spoiled part is fetched again alone, within the same pass; a download killed with -9 halfway
//! resumes on the next run, fetching again at most one part per connection.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use drover_tests::faultproxy::{Fault, FaultProxy, Match};
use drover_tests::host::{stderr, Host};
use drover_tests::release::{noise, raw_tar_gz, RawEntry};
use drover_tests::World;

const PART: u64 = 1 << 20;
const CONNECTIONS: u64 = 4;

/// A host whose agent goes through `proxy`, in parts of 1 MiB over 4 connections.
fn host_behind(proxy: &FaultProxy, label: &str) -> Host {
    Host::with_artifact_keys(
        World::new(label),
        &proxy.endpoint(),
        &format!("download_connections = {CONNECTIONS}\ndownload_part_size = \"1MiB\""),
        "",
    )
}

/// A release of `mib` MiB that does not compress: as many parts.
fn big_release(version: &str, mib: usize) -> Vec<u8> {
    raw_tar_gz(&[
        RawEntry::file("VERSION", format!("{version}\n").as_bytes()),
        RawEntry::file("payload", &noise(mib << 20)),
    ])
}

/// The tarball's GETs the proxy saw, and how many of them were spoiled.
fn tarball_gets(proxy: &FaultProxy) -> (usize, usize) {
    let gets: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| Match::s3_get(".tar.gz").matches(s))
        .collect();
    let spoiled = gets.iter().filter(|s| s.fault.is_some()).count();
    (gets.len(), spoiled)
}

#[test]
fn spoiled_parts_are_fetched_again_alone_within_the_pass() {
    let proxy = FaultProxy::in_front_of_moto();
    let host = host_behind(&proxy, "parts_faults");
    let archive = big_release("1.0.0", 12);
    let parts = archive.len().div_ceil(PART as usize);
    host.upload_and_promote("1.0.0", &archive);
    let tarball = Match::s3_get(".tar.gz");
    // A reset mid-body, a truncated body, a `SlowDown`, a 503 and three 500s, on whichever parts
    // are asked for next: each spoiled request costs one more, by the SDK's retry (an answer that
    // fails) or by drover's retry of the part (a body cut short, or the SDK out of attempts). A
    // slow body is no failure: it costs time, not a request.
    proxy.inject(tarball.clone(), Fault::ResetMidBody, 1);
    proxy.inject(tarball.clone(), Fault::Truncate, 1);
    proxy.inject(tarball.clone(), Fault::Throttle, 1);
    proxy.inject(tarball.clone(), Fault::Status(503), 1);
    proxy.inject(tarball.clone(), Fault::Status(500), 3);
    proxy.inject(tarball, Fault::Slow(Duration::from_millis(500)), 1);

    let out = host.drover(&["once"]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(host.current(), "releases/1.0.0");
    assert!(
        text.contains(&format!(
            "in {parts} parts over up to {CONNECTIONS} connections"
        )),
        "{text}"
    );
    assert!(!text.contains("poll_failed"), "{text}");
    let (gets, spoiled) = tarball_gets(&proxy);
    eprintln!("{parts} parts: {gets} GETs, {spoiled} spoiled");
    assert_eq!(spoiled, 8);
    assert_eq!(
        gets,
        parts + 7,
        "each failed part fetched again, alone; the slow one once"
    );
    let downloads = std::fs::read_dir(host.root().join(".downloads"))
        .unwrap()
        .count();
    assert_eq!(downloads, 0, "the download is used up once installed");
}

#[test]
fn a_download_killed_halfway_resumes_fetching_again_at_most_a_part_per_connection() {
    let proxy = FaultProxy::in_front_of_moto();
    let host = host_behind(&proxy, "parts_resume");
    let archive = big_release("1.0.0", 24);
    let size = archive.len() as u64;
    host.upload_and_promote("1.0.0", &archive);
    // 4 connections at 2 MiB/s each: about 3 s for the whole artifact.
    proxy.cap_rate(2 << 20);

    let record = host.root().join(".downloads/1.0.0.part.json");
    let mut first = host
        .command(&["once"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let done = std::fs::read(&record)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|r| r["done"].as_array().map(Vec::len))
            .unwrap_or(0);
        if done * 2 >= archive.len().div_ceil(PART as usize) {
            break done;
        }
        assert!(Instant::now() < deadline, "no progress: {done} parts");
        std::thread::sleep(Duration::from_millis(20));
    };
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    // What the killed run was sent, including parts cut off in flight.
    std::thread::sleep(Duration::from_millis(200));
    let before = proxy.bytes_sent();
    assert!(host.current().is_empty() || host.current() == "releases/1.0.0");

    let out = host.drover(&["once"]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(host.current(), "releases/1.0.0");
    assert!(text.contains("kept from an interrupted download"), "{text}");
    let refetched = proxy.bytes_sent().saturating_sub(size);
    eprintln!(
        "killed with {done} parts recorded, {before} bytes sent; then {} more; {refetched} bytes \
         fetched twice (bound {} = one part per connection)",
        proxy.bytes_sent() - before,
        CONNECTIONS * PART
    );
    assert!(
        refetched <= CONNECTIONS * PART,
        "{refetched} bytes fetched twice"
    );
}

/// `drover publish --format zstd` packs a directory as `.tar.zst` (level 9, with a checksum),
/// announces its unpacked size, and an instance deploys it, in parts too; a `.tar.zst` uploaded
/// under a `.tar.gz` key deploys as well: the compression is told by its magic bytes.
#[test]
fn zstd_releases_deploy_under_any_key() {
    let proxy = FaultProxy::in_front_of_moto();
    let host = Host::with_artifact_keys(
        World::new("zstd"),
        &proxy.endpoint(),
        "key = \"releases/{version}.tar.zst\"\ndownload_part_size = \"1MiB\"",
        "",
    );
    let tree = host.world.dir().join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("VERSION"), "1.0.0\n").unwrap();
    std::fs::write(tree.join("bin/payload"), noise(3 << 20)).unwrap();
    let tree_arg = tree.to_string_lossy().into_owned();
    let out = host.drover(&[
        "publish",
        "--version",
        "1.0.0",
        "--format",
        "zstd",
        &tree_arg,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = drover_tests::host::stdout(&out);
    assert!(said.contains("releases/1.0.0.tar.zst"), "{said}");
    assert!(
        said.contains(&format!("{} bytes unpacked", 6 + (3 << 20))),
        "{said}"
    );
    let object = host
        .world
        .moto
        .get_object(&host.world.bucket, "releases/1.0.0.tar.zst")
        .expect("the artifact");
    assert_eq!(
        &object[..4],
        &[0x28, 0xb5, 0x2f, 0xfd],
        "zstd's magic bytes"
    );

    let out = host.drover(&["promote", "1.0.0"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(host.current(), "releases/1.0.0");
    let served = std::fs::read(host.root().join("current/bin/payload")).unwrap();
    assert_eq!(served, noise(3 << 20));
    let (gets, _) = tarball_gets(&proxy);
    assert_eq!(gets, 0, "no .tar.gz was asked for");
    let parts = proxy
        .seen()
        .iter()
        .filter(|s| Match::s3_get(".tar.zst").matches(s))
        .count();
    assert_eq!(parts, object.len().div_ceil(PART as usize), "in parts");

    // A .tar.zst under a .tar.gz name, on a host with the default key template.
    let plain = Host::new("zstd_misnamed");
    let zst = drover_tests::release::zstd_of_gzip(&big_release("2.0.0", 1)).unwrap();
    plain.upload_and_promote("2.0.0", &zst);
    let out = plain.drover(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(plain.current(), "releases/2.0.0");
}
