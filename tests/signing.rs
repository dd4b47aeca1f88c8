//! Signed releases through the real parts: keys and signatures made by the `minisign` tool
//! itself (prehashed and legacy), artifacts in moto, the agent's `drover once`, and
//! `drover publish --sign` checked by `minisign -V` in turn.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use drover_tests::host::{stderr, Host};
use drover_tests::release::app_tarball;
use drover_tests::World;

/// A key pair made by `minisign -G -W` (no password): the public key's base64 line, and the
/// secret key file.
fn keypair(dir: &Path, name: &str) -> (String, PathBuf) {
    let (public, secret) = (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.key")),
    );
    minisign(&["-G", "-W", "-p"], &[&public, Path::new("-s"), &secret]);
    let line = fs::read_to_string(&public)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    (line, secret)
}

fn minisign(flags: &[&str], paths: &[&Path]) -> String {
    let out = Command::new("minisign")
        .args(flags)
        .args(paths)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("minisign is installed by `make test-setup`");
    assert!(
        out.status.success(),
        "minisign {flags:?} {paths:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `minisign -S` of `file` (legacy with `-l`), as the file would be named in the bucket.
fn sign(secret: &Path, file: &Path, legacy: bool) -> Vec<u8> {
    sign_with(secret, file, if legacy { &["-l"] } else { &[] })
}

/// `minisign -S FLAGS...` of `file` (`-t COMMENT`, say): the signature file's bytes.
fn sign_with(secret: &Path, file: &Path, flags: &[&str]) -> Vec<u8> {
    let sig = file.with_extension("gz.minisig");
    let mut all = vec!["-S"];
    all.extend(flags);
    all.push("-s");
    minisign(
        &all,
        &[secret, Path::new("-m"), file, Path::new("-x"), &sig],
    );
    fs::read(&sig).unwrap()
}

struct Case<'a> {
    host: &'a Host,
}

impl Case<'_> {
    /// The sample app's tarball for `version`, named as the bucket names it.
    fn tarball(&self, version: &str) -> PathBuf {
        app_tarball(&self.host.world.artifacts_dir(), version, true)
    }

    /// Uploads `tarball` as `version` with its true `.sha256` and, if any, `signature`; promotes.
    fn upload(&self, version: &str, tarball: &[u8], signature: Option<&[u8]>) {
        let world = &self.host.world;
        if let Some(sig) = signature {
            let key = format!("releases/{version}.tar.gz.minisig");
            world.moto.put_object(&world.bucket, &key, sig);
        }
        self.host.upload_and_promote(version, tarball);
    }

    fn deployed(&self, version: &str) {
        let out = self.host.drover(&["once"]);
        assert_eq!(out.status.code(), Some(0), "{version}: {}", stderr(&out));
        assert_eq!(self.host.current(), format!("releases/{version}"));
        assert!(stderr(&out).contains("signed by key"), "{}", stderr(&out));
    }

    /// `drover once` rejects `version` with an error containing `why`; nothing else changes.
    fn rejected(&self, version: &str, why: &str) {
        let before = (self.host.current(), self.host.release_dirs());
        let out = self.host.drover(&["once"]);
        assert_eq!(out.status.code(), Some(1), "{version}: {}", stderr(&out));
        let last = &self.host.status()["last"];
        assert_eq!(last["result"], "rejected", "{version}: {last}");
        assert_eq!(last["version"], version);
        let error = last["error"].as_str().unwrap();
        assert!(error.contains(why), "{version}: {error:?} lacks {why:?}");
        assert!(
            stderr(&out).contains("artifact_rejected"),
            "{}",
            stderr(&out)
        );
        assert_eq!((self.host.current(), self.host.release_dirs()), before);
    }
}

#[test]
fn only_artifacts_signed_by_a_trusted_key_are_deployed() {
    let world = World::new("signing");
    let keys = world.dir().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let (old_pub, old_key) = keypair(&keys, "old");
    let (new_pub, new_key) = keypair(&keys, "new");
    let (_, rogue_key) = keypair(&keys, "rogue");
    let endpoint = world.moto.endpoint();
    let trust = |keys: &[&str]| {
        let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        format!("trusted_keys = [{}]", quoted.join(", "))
    };
    let host = Host::with_artifact_keys(world, &endpoint, &trust(&[&old_pub]), "");
    let case = Case { host: &host };

    // Unsigned, with keys configured.
    let t = case.tarball("1.0.0");
    case.upload("1.0.0", &fs::read(&t).unwrap(), None);
    case.rejected("1.0.0", "releases/1.0.0.tar.gz.minisig: malformed signature file: not found: the artifact is not signed");

    // Signed by minisign, prehashed (its default) and legacy.
    let t = case.tarball("1.1.0");
    case.upload(
        "1.1.0",
        &fs::read(&t).unwrap(),
        Some(&sign(&old_key, &t, false)),
    );
    case.deployed("1.1.0");
    let signed_110 = (fs::read(&t).unwrap(), sign(&old_key, &t, false));
    let t = case.tarball("1.2.0");
    case.upload(
        "1.2.0",
        &fs::read(&t).unwrap(),
        Some(&sign(&old_key, &t, true)),
    );
    case.deployed("1.2.0");

    // Signed by a key nobody trusts.
    let t = case.tarball("1.3.0");
    case.upload(
        "1.3.0",
        &fs::read(&t).unwrap(),
        Some(&sign(&rogue_key, &t, false)),
    );
    case.rejected("1.3.0", "which is not in trusted_keys");

    // The tarball swapped after signing (its .sha256 made to match the swap).
    let t = case.tarball("1.4.0");
    let sig = sign(&old_key, &t, false);
    let mut swapped = fs::read(&t).unwrap();
    let last = swapped.len() - 1;
    swapped[last] ^= 1; // inside gzip's trailer: still a tarball, another file
    case.upload("1.4.0", &swapped, Some(&sig));
    case.rejected("1.4.0", "the signature does not match the artifact");

    // The .sha256 swapped after signing.
    let t = case.tarball("1.5.0");
    case.upload(
        "1.5.0",
        &fs::read(&t).unwrap(),
        Some(&sign(&old_key, &t, false)),
    );
    let sums = format!("{}  1.5.0.tar.gz\n", "0".repeat(64));
    host.world.moto.put_object(
        &host.world.bucket,
        "releases/1.5.0.tar.gz.sha256",
        sums.as_bytes(),
    );
    host.world.promote("1.5.0");
    case.rejected("1.5.0", "sha256 mismatch");

    // 1.1.0, signed and genuine, replayed as 1.6.0.
    case.upload("1.6.0", &signed_110.0, Some(&signed_110.1));
    case.rejected(
        "1.6.0",
        "does not bind the signature to releases/1.6.0.tar.gz (version 1.6.0)",
    );

    // Rotation: trust both keys, publish with the new one through `drover publish --sign`...
    let text = fs::read_to_string(&host.config).unwrap();
    let both = text.replace(&trust(&[&old_pub]), &trust(&[&old_pub, &new_pub]));
    fs::write(&host.config, &both).unwrap();
    let t = case.tarball("1.7.0");
    let out = host.drover(&[
        "publish",
        "--version",
        "1.7.0",
        "--sign",
        new_key.to_str().unwrap(),
        t.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    host.world.promote("1.7.0");
    case.deployed("1.7.0");
    // ...whose signature minisign itself accepts.
    let fetched = host.world.dir().join("fetched");
    fs::create_dir_all(&fetched).unwrap();
    for name in ["1.7.0.tar.gz", "1.7.0.tar.gz.minisig"] {
        let body = host
            .world
            .moto
            .get_object(&host.world.bucket, &format!("releases/{name}"))
            .unwrap();
        fs::write(fetched.join(name), body).unwrap();
    }
    let verified = minisign(
        &["-V", "-p"],
        &[
            &keys.join("new.pub"),
            Path::new("-m"),
            &fetched.join("1.7.0.tar.gz"),
        ],
    );
    assert!(verified.contains("file:1.7.0.tar.gz"), "{verified}");

    // ...then drop the old key: what it signs is refused.
    fs::write(
        &host.config,
        text.replace(&trust(&[&old_pub]), &trust(&[&new_pub])),
    )
    .unwrap();
    let t = case.tarball("1.8.0");
    case.upload(
        "1.8.0",
        &fs::read(&t).unwrap(),
        Some(&sign(&old_key, &t, false)),
    );
    case.rejected("1.8.0", "which is not in trusted_keys");
}

/// Issue 13, finding 2: with `{version}` in a directory of the key, every version's file is
/// `app.tar.gz`, and minisign's default trusted comment (`file:app.tar.gz`) names no version.
/// Whoever can write to the bucket, but not sign, must not get a signed 1.0.0 deployed as 2.0.0.
#[test]
fn a_signed_release_copied_to_another_versions_directory_is_rejected() {
    let world = World::new("signing-dir");
    let keys = world.dir().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let (public, secret) = keypair(&keys, "release");
    let endpoint = world.moto.endpoint();
    let artifact =
        format!("key = \"releases/{{version}}/app.tar.gz\"\ntrusted_keys = [\"{public}\"]");
    let host = Host::with_artifact_keys(world, &endpoint, &artifact, "");
    let case = Case { host: &host };
    let (moto, bucket) = (&host.world.moto, &host.world.bucket);
    let key = |version: &str, suffix: &str| format!("releases/{version}/app.tar.gz{suffix}");
    // The tarball of `version` as `app.tar.gz`, in a directory of its own: what minisign signs.
    let tarball = |version: &str| {
        let dir = host.world.artifacts_dir().join(version);
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("app.tar.gz");
        fs::rename(case.tarball(version), &file).unwrap();
        file
    };
    let upload = |version: &str, body: &[u8], signature: &[u8]| {
        moto.put_object(bucket, &key(version, ".minisig"), signature);
        let sums = format!("{}  app.tar.gz\n", drover_tests::sha256_hex(body));
        moto.put_object(bucket, &key(version, ".sha256"), sums.as_bytes());
        moto.put_object(bucket, &key(version, ""), body);
        host.world.promote(version);
    };

    // 1.0.0, published and signed by drover: its comment names the version too, as minisign
    // itself shows.
    let t = tarball("1.0.0");
    let out = host.drover(&[
        "publish",
        "--version",
        "1.0.0",
        "--sign",
        secret.to_str().unwrap(),
        t.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    host.world.promote("1.0.0");
    case.deployed("1.0.0");
    let published: Vec<Vec<u8>> = ["", ".sha256", ".minisig"]
        .iter()
        .map(|suffix| moto.get_object(bucket, &key("1.0.0", suffix)).unwrap())
        .collect();
    fs::write(t.with_extension("gz.minisig"), &published[2]).unwrap();
    let verified = minisign(
        &["-V", "-p"],
        &[&keys.join("release.pub"), Path::new("-m"), &t],
    );
    assert!(
        verified.contains("\tfile:app.tar.gz\tversion:1.0.0\t"),
        "{verified}"
    );

    // The attack: 1.0.0's tarball, digest and signature copied to 2.0.0's directory.
    for (suffix, body) in ["", ".sha256", ".minisig"].iter().zip(&published) {
        moto.put_object(bucket, &key("2.0.0", suffix), body);
    }
    host.world.promote("2.0.0");
    case.rejected(
        "2.0.0",
        "does not bind the signature to releases/2.0.0/app.tar.gz (version 2.0.0): it must hold \
         version:2.0.0 or key:releases/2.0.0/app.tar.gz",
    );

    // The genuine 2.0.0, signed with plain minisign and the version as its trusted comment.
    let t = tarball("2.0.0");
    upload(
        "2.0.0",
        &fs::read(&t).unwrap(),
        &sign_with(&secret, &t, &["-t", "version:2.0.0"]),
    );
    case.deployed("2.0.0");

    // minisign's default comment names only app.tar.gz, the same for every version: refused.
    let t = tarball("3.0.0");
    upload("3.0.0", &fs::read(&t).unwrap(), &sign(&secret, &t, false));
    case.rejected("3.0.0", "\"timestamp:");

    // The full key works as well; a key token naming another version does not.
    let t = tarball("4.0.0");
    let body = fs::read(&t).unwrap();
    let other = "key:releases/4.0.1/app.tar.gz";
    upload("4.0.0", &body, &sign_with(&secret, &t, &["-t", other]));
    case.rejected("4.0.0", other);
    let comment = "timestamp:1\tkey:releases/4.0.0/app.tar.gz";
    upload("4.0.0", &body, &sign_with(&secret, &t, &["-t", comment]));
    case.deployed("4.0.0");
}

/// With `[artifact] trusted_keys`, `publish` signs with a trusted key or uploads nothing, and
/// `promote` refuses a version whose signature is missing or by a key the instances do not
/// trust.
#[test]
fn publish_and_promote_refuse_what_trusted_keys_would_reject() {
    let world = World::new("signing_guard");
    let keys = world.dir().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let (trusted, key) = keypair(&keys, "trusted");
    let (_, rogue) = keypair(&keys, "rogue");
    let endpoint = world.moto.endpoint();
    let host = Host::with_artifact_keys(
        world,
        &endpoint,
        &format!("trusted_keys = [\"{trusted}\"]"),
        "",
    );
    let world = &host.world;
    let t = app_tarball(&world.artifacts_dir(), "1.0.0", true);
    let path = t.to_string_lossy();
    let objects = |version: &str| {
        ["", ".sha256", ".minisig"]
            .iter()
            .filter(|ext| {
                let key = format!("releases/{version}.tar.gz{ext}");
                world.moto.get_object(&world.bucket, &key).is_some()
            })
            .count()
    };

    let out = host.drover(&["publish", "--version", "1.0.0", &path]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no --sign KEY was given"),
        "{}",
        stderr(&out)
    );
    let out = host.drover(&[
        "publish",
        "--version",
        "1.0.0",
        "--sign",
        &rogue.to_string_lossy(),
        &path,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not verify against [artifact] trusted_keys"),
        "{}",
        stderr(&out)
    );
    assert_eq!(objects("1.0.0"), 0);
    let out = host.drover(&[
        "publish",
        "--version",
        "1.0.0",
        "--sign",
        &key.to_string_lossy(),
        &path,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(objects("1.0.0"), 3);
    let out = host.drover(&["promote", "1.0.0"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Uploaded around drover: unsigned, then signed by a key the instances do not trust.
    let t = app_tarball(&world.artifacts_dir(), "2.0.0", true);
    let bytes = fs::read(&t).unwrap();
    let sums = format!("{}  2.0.0.tar.gz\n", drover_tests::sha256_hex(&bytes));
    world
        .moto
        .put_object(&world.bucket, "releases/2.0.0.tar.gz", &bytes);
    world.moto.put_object(
        &world.bucket,
        "releases/2.0.0.tar.gz.sha256",
        sums.as_bytes(),
    );
    let out = host.drover(&["promote", "2.0.0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "releases/2.0.0.tar.gz.minisig not found, and instances trust only signed releases"
        ),
        "{}",
        stderr(&out)
    );
    world.moto.put_object(
        &world.bucket,
        "releases/2.0.0.tar.gz.minisig",
        &sign(&rogue, &t, false),
    );
    let out = host.drover(&["promote", "2.0.0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("releases/2.0.0.tar.gz.minisig: "),
        "{}",
        stderr(&out)
    );
    // 1.0.0's own signature, copied beside 2.0.0: signed by a trusted key, but bound to 1.0.0.
    let signed = world
        .moto
        .get_object(&world.bucket, "releases/1.0.0.tar.gz.minisig")
        .unwrap();
    world
        .moto
        .put_object(&world.bucket, "releases/2.0.0.tar.gz.minisig", &signed);
    let out = host.drover(&["promote", "2.0.0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not bind the signature to releases/2.0.0.tar.gz"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        world.moto.get_parameter(&world.parameter).map(|(v, _)| v),
        Some("1.0.0".into())
    );
}
