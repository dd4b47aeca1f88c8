//! A host-side "instance": its own release root and state directory under the test's temp dir,
//! no units and no health URL, driven with `drover once` / `run` / `status` against moto (or
//! anything standing in front of it, such as the fault proxy). No container, so these run in
//! seconds; systemd is exercised by the container tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::world::{World, AWS_ENV};

pub struct Host {
    pub world: World,
    pub config: PathBuf,
}

impl Host {
    /// A host whose agent talks to moto directly.
    pub fn new(label: &str) -> Host {
        let world = World::new(label);
        let endpoint = world.moto.endpoint();
        Host::with_config(world, &endpoint, "")
    }

    /// A host whose agent talks to `endpoint` (a proxy in front of moto, say), with `extra`
    /// TOML appended to the config (its own `[section]`s, not ones already written here).
    pub fn with_config(world: World, endpoint: &str, extra: &str) -> Host {
        Host::with_artifact_keys(world, endpoint, "", extra)
    }

    /// As [`Host::with_config`], with `artifact` lines added to the `[artifact]` section
    /// (`max_unpacked_size = "16MiB"`, say).
    pub fn with_artifact_keys(world: World, endpoint: &str, artifact: &str, extra: &str) -> Host {
        let config = world.dir().join("host.toml");
        let text = config_toml(&world, endpoint, world.dir(), "1s", artifact, extra);
        std::fs::write(&config, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        Host { world, config }
    }

    /// Runs `drover --config HOST_CONFIG ARGS...` to completion.
    pub fn drover(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run drover: {e}"))
    }

    /// The command, for a caller that wants to spawn it (`drover run`) or change its environment.
    pub fn command(&self, args: &[&str]) -> Command {
        drover_command(&self.config, args)
    }

    /// Uploads `archive` as `version` with its true `.sha256` straight to moto, then promotes
    /// it: what an operator does, or an attacker with write access to the bucket.
    pub fn upload_and_promote(&self, version: &str, archive: &[u8]) {
        let world = &self.world;
        let key = format!("releases/{version}.tar.gz");
        world.moto.put_object(&world.bucket, &key, archive);
        let sums = format!("{}  {version}.tar.gz\n", crate::sha256_hex(archive));
        world
            .moto
            .put_object(&world.bucket, &format!("{key}.sha256"), sums.as_bytes());
        world.promote(version);
    }

    /// The release root (`[release] root`).
    pub fn root(&self) -> PathBuf {
        self.world.dir().join("app")
    }

    /// `drover status --json`.
    pub fn status(&self) -> Value {
        let out = self.drover(&["status", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("drover status --json is not JSON ({e})"))
    }

    /// Where `current` points (`releases/1.0.0`), or "" when there is no release yet.
    pub fn current(&self) -> String {
        std::fs::read_link(self.root().join("current"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// The names in `releases/` and `.staging/`, sorted: what a failed deploy must not change.
    pub fn release_dirs(&self) -> (Vec<String>, Vec<String>) {
        let list = |dir: &str| crate::sorted_names(&self.root().join(dir));
        (list("releases"), list(".staging"))
    }
}

/// A host agent's config for `world`'s parameter and bucket, talking to `endpoint`, polling every
/// `poll_interval` (`"1s"`, `"250ms"`), with its release root in `dir/app` and its state in
/// `dir/state`; `artifact` lines go into `[artifact]`, `extra` TOML at the end. Agents of one
/// world that each have their own `dir` make a fleet.
pub fn config_toml(
    world: &World,
    endpoint: &str,
    dir: &Path,
    poll_interval: &str,
    artifact: &str,
    extra: &str,
) -> String {
    format!(
        "[source]\nparameter = \"{}\"\npoll_interval = \"{poll_interval}\"\n\
         [artifact]\nbucket = \"{}\"\n{artifact}\n\
         [release]\nroot = \"{}\"\nkeep = 2\n\
         [service]\nunits = []\n\
         [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
         [agent]\nstate_dir = \"{}\"\n{extra}",
        world.parameter,
        world.bucket,
        dir.join("app").display(),
        dir.join("state").display(),
    )
}

/// `drover --config CONFIG ARGS...` with the test credentials.
pub fn drover_command(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(crate::drover_bin());
    cmd.arg("--config").arg(config).args(args).envs(AWS_ENV);
    cmd
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
