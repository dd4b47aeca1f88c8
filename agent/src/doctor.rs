//! `drover doctor`: checks everything the agent needs, one line per check, each failure with what
//! to do about it. The checks are effects; turning their results into lines and an exit status
//! is pure ([`Report`]).

use std::path::Path;
use std::time::Duration;

use crate::aws::{S3Store, SsmSource};
use crate::config::{Config, Layers};
use crate::health::{HealthProbe, HttpProbe};
use crate::reach::Fix;
use crate::source::{DesiredSource, SourceError};
use crate::store::StoreError;
use crate::systemd::Systemd;

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok(String),
    /// Not a failure, but worth knowing (nothing deployed yet, a check that was skipped).
    Note(String),
    /// `what` went wrong; `fix` says what to do.
    Fail {
        what: String,
        fix: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
}

#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, name: impl Into<String>, verdict: Verdict) {
        self.checks.push(Check {
            name: name.into(),
            verdict,
        });
    }

    pub fn passed(&self) -> bool {
        !self
            .checks
            .iter()
            .any(|c| matches!(c.verdict, Verdict::Fail { .. }))
    }

    /// `doctor --json`: the checks, and what the config was merged from and into.
    pub fn to_json(&self, layers: &Layers) -> serde_json::Value {
        let checks: Vec<serde_json::Value> = (self.checks.iter())
            .map(|c| {
                let (result, detail, fix) = match &c.verdict {
                    Verdict::Ok(detail) => ("ok", detail.as_str(), None),
                    Verdict::Note(detail) => ("note", detail.as_str(), None),
                    Verdict::Fail { what, fix } => ("fail", what.as_str(), Some(fix.as_str())),
                };
                serde_json::json!({ "name": c.name, "result": result, "detail": detail, "fix": fix })
            })
            .collect();
        serde_json::json!({
            "schema": 1,
            "passed": self.passed(),
            "checks": checks,
            "config": {
                "files": layers.files,
                "merged": layers.merged,
            },
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            match &c.verdict {
                Verdict::Ok(detail) => out += &format!("ok    {}: {detail}\n", c.name),
                Verdict::Note(detail) => out += &format!("note  {}: {detail}\n", c.name),
                Verdict::Fail { what, fix } => {
                    out += &format!("FAIL  {}: {what}\n      fix: {fix}\n", c.name)
                }
            }
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Fail { .. }))
            .count();
        out += &match failed {
            0 => format!("all {} checks passed\n", self.checks.len()),
            n => format!("{n} of {} checks failed\n", self.checks.len()),
        };
        out
    }
}

fn fail(what: impl ToString, fix: impl Into<String>) -> Verdict {
    Verdict::Fail {
        what: what.to_string(),
        fix: fix.into(),
    }
}

/// Runs every check. `layers` and `config_path` name the files the config came from.
pub async fn run(config: &Config, layers: &Layers, config_path: &std::path::Path) -> Report {
    let mut report = Report::default();
    report.add(
        "config",
        Verdict::Ok(format!("{} is valid", layers.origin(config_path).display())),
    );

    let sdk = crate::aws::sdk_config(&config.aws).await;
    check_credentials(&mut report, &sdk).await;
    let source = SsmSource::new(&sdk, &config.source.parameter);
    let request = check_parameter(&mut report, config, &source).await;
    let desired = request.as_ref().map(|(d, _)| d.clone());
    let store = S3Store::new(&sdk, &config.aws, &config.artifact.bucket);
    if check_bucket(&mut report, config, &store).await {
        check_artifact(&mut report, config, &store, desired.as_ref()).await;
    }
    check_fleet(&mut report, config, &sdk, &store, request.as_ref()).await;
    check_units(&mut report, config).await;
    check_disk(&mut report, config);
    check_owner(&mut report, config);
    check_state_dir(&mut report, config);
    check_metrics(&mut report, config);
    check_health(&mut report, config).await;
    report
}

/// The report when the config cannot be loaded: that one failed check.
pub fn config_failed(error: &crate::config::ConfigError) -> Report {
    use crate::config::ConfigError;
    let verdict = match error {
        ConfigError::Untrusted {
            path, source, fix, ..
        } => fail(
            format!(
                "{} is not safe to act on: {source}; whoever can change it can make drover \
                 deploy anything as root",
                path.display()
            ),
            fix.clone(),
        ),
        ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => fail(
            error,
            "write it (start from /etc/drover/config.toml.example), or name yours with --config \
             or DROVER_CONFIG",
        ),
        e => fail(e, "correct the config: the message names the key at fault"),
    };
    let mut report = Report::default();
    report.add("config", verdict);
    report
}

/// With a rollout in the parameter or `[fleet]` configured: the instance id from IMDS, this
/// instance's place, and the failures the fleet reported (a listing, as before an adoption).
async fn check_fleet(
    report: &mut Report,
    config: &Config,
    sdk: &aws_config::SdkConfig,
    store: &S3Store,
    request: Option<&(crate::value::Desired, i64)>,
) {
    let desired = request.map(|(d, _)| d);
    let rollout = desired.and_then(|d| d.rollout.as_ref());
    let prefix = config.fleet.status_prefix.as_deref();
    if rollout.is_none() && prefix.is_none() {
        return;
    }
    let id = match crate::aws::imds_identity(sdk, &config.aws) {
        Ok(mut identity) => identity.instance_id().await,
        Err(e) => Err(e),
    };
    match (&id, desired) {
        (Ok(id), Some(d)) => {
            let position = crate::rollout::position(id, &d.version);
            report.add(
                "instance id",
                Verdict::Ok(format!("{id}: position {position:.4} for {}", d.version)),
            );
        }
        (Ok(id), None) => report.add("instance id", Verdict::Ok(id.clone())),
        (Err(e), _) => report.add(
            "instance id",
            fail(
                e,
                "enable the instance metadata service (IMDSv2) on this instance, with a hop limit \
                 of at least 1; or set [aws] metadata_endpoint_url",
            ),
        ),
    }
    let (Some(prefix), Some((d, parameter_version))) = (prefix, request) else {
        return;
    };
    let failures = crate::fleet::failures_prefix(prefix, d.version.as_str(), *parameter_version);
    let name = format!("fleet status s3://{}/{prefix}", config.artifact.bucket);
    let listed = crate::store::ArtifactStore::list_keys(store, &failures, 1000).await;
    match listed {
        Ok(keys) => report.add(
            name,
            Verdict::Ok(format!(
                "{} instance(s) reported failing {} (parameter version {}); max_failures {}",
                keys.len(),
                d.version,
                parameter_version,
                rollout
                    .and_then(|r| r.max_failures)
                    .unwrap_or(config.fleet.max_failures)
            )),
        ),
        Err(e @ StoreError::Denied { .. }) => report.add(
            name,
            fail(
                e,
                "attach packaging/iam/drover-instance-fleet-policy.json to the instance role \
                 (docs/IAM.md)",
            ),
        ),
        Err(e) => report.add(name, fail(e, "check the bucket and network access to S3")),
    }
}

async fn check_credentials(report: &mut Report, sdk: &aws_config::SdkConfig) {
    use aws_sdk_s3::config::ProvideCredentials;
    let verdict = match sdk.credentials_provider() {
        None => fail(
            "no credentials provider",
            "attach an instance profile, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        ),
        Some(provider) => match provider.provide_credentials().await {
            Ok(creds) => Verdict::Ok(format!(
                "found (access key {}…)",
                creds.access_key_id().chars().take(4).collect::<String>()
            )),
            Err(e) => {
                let reach = crate::reach::Reach::NoCredentials {
                    tried: crate::reach::credential_chain_line(&crate::aws::causes(&e)),
                };
                fail(&reach, reach.fix())
            }
        },
    };
    report.add("credentials", verdict);
    let region = sdk
        .region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "-".into());
    report.add(
        "region",
        match sdk.region() {
            Some(_) => Verdict::Ok(region),
            None => fail(
                "no region",
                "set [aws] region in the config, or AWS_REGION; on EC2 it comes from the metadata service",
            ),
        },
    );
}

async fn check_parameter(
    report: &mut Report,
    config: &Config,
    source: &SsmSource,
) -> Option<(crate::value::Desired, i64)> {
    let name = format!("parameter {}", config.source.parameter);
    match source.read().await {
        Ok(p) => match crate::value::parse_value(&p.value) {
            Ok(d) => {
                report.add(
                    name,
                    Verdict::Ok(format!("{} (parameter version {})", d.version, p.version)),
                );
                Some((d, p.version))
            }
            Err(e) => {
                report.add(
                    name,
                    fail(
                        format!("value {:?}: {e}", p.value),
                        "put a valid version: drover promote VERSION",
                    ),
                );
                None
            }
        },
        Err(SourceError::NotFound { .. }) => {
            report.add(
                name,
                Verdict::Note(
                    "does not exist yet: nothing to deploy until `drover promote VERSION`".into(),
                ),
            );
            None
        }
        Err(e @ SourceError::Denied { .. }) => {
            report.add(
                name,
                fail(
                    e,
                    "allow ssm:GetParameter on this parameter in the instance role (docs/IAM.md)",
                ),
            );
            None
        }
        Err(e) => {
            let fix = (e.fix()).unwrap_or_else(|| {
                "check the region, the endpoint and network access to SSM".into()
            });
            report.add(name, fail(e, fix));
            None
        }
    }
}

async fn check_artifact(
    report: &mut Report,
    config: &Config,
    store: &S3Store,
    desired: Option<&crate::value::Desired>,
) {
    let Some(desired) = desired else {
        report.add(
            "artifact",
            Verdict::Note("skipped: no desired version to look for".into()),
        );
        return;
    };
    let key = config.artifact.key_for(&desired.version);
    let mut keys = vec![key.clone()];
    if desired.sha256.is_none() {
        keys.push(format!("{key}.sha256"));
    }
    for key in keys {
        let name = format!("s3://{}/{key}", config.artifact.bucket);
        let verdict = match store.exists(&key).await {
            Ok(true) => Verdict::Ok("readable".into()),
            Ok(false) => fail(
                "not found",
                "publish it: drover publish --version VERSION PATH",
            ),
            Err(e @ StoreError::Denied { .. }) => fail(
                e,
                "allow s3:GetObject on the release prefix in the instance role (docs/IAM.md)",
            ),
            Err(e) => {
                let fix = (e.fix()).unwrap_or_else(|| {
                    "check the bucket name, the region and network access to S3".into()
                });
                fail(e, fix)
            }
        };
        report.add(name, verdict);
    }
}

/// The bucket itself, by a listing of the release prefix (which the instance policy allows): an
/// object's `HeadObject` answers a bare 404 for a missing bucket too. Whether the objects in it
/// are worth checking.
async fn check_bucket(report: &mut Report, config: &Config, store: &S3Store) -> bool {
    let prefix = config.artifact.prefix();
    let name = format!("bucket {}", config.artifact.bucket);
    let checked = store.check_bucket(prefix).await;
    let there = matches!(checked, Ok(()) | Err(StoreError::Denied { .. }));
    let verdict = match checked {
        Ok(()) => Verdict::Ok(format!("lists s3://{}/{prefix}", config.artifact.bucket)),
        // Reading objects may still be allowed: their own check says.
        Err(e @ StoreError::Denied { .. }) => Verdict::Note(format!("{e} (not needed to deploy)")),
        Err(e) => {
            let fix = (e.fix()).unwrap_or_else(|| "check network access to S3".into());
            fail(e, fix)
        }
    };
    report.add(name, verdict);
    there
}

async fn check_units(report: &mut Report, config: &Config) {
    if config.service.units.is_empty() {
        report.add(
            "units",
            Verdict::Note("none configured: nothing is restarted".into()),
        );
        return;
    }
    let systemd = Systemd::new(Duration::from_secs(10));
    for unit in &config.service.units {
        let verdict = match systemd.load_state(unit).await {
            Ok(state) if state == "loaded" => Verdict::Ok("loaded".into()),
            Ok(state) => fail(
                format!("load state is {state}"),
                format!("install /etc/systemd/system/{unit} and run systemctl daemon-reload"),
            ),
            Err(e) => fail(
                e,
                "drover needs the system bus (/run/dbus/system_bus_socket) and must run as root",
            ),
        };
        report.add(format!("unit {unit}"), verdict);
    }
}

fn check_disk(report: &mut Report, config: &Config) {
    // Where the release root will be: its closest existing ancestor.
    let mut dir = config.release.root.as_path();
    while !dir.exists() {
        dir = dir.parent().unwrap_or(std::path::Path::new("/"));
    }
    let need = config.artifact.max_size.saturating_mul(2);
    let name = format!("free space at {}", config.release.root.display());
    let verdict = match crate::fsutil::free_space(dir) {
        Ok(free) if free >= need => Verdict::Ok(format!("{} MiB free", free >> 20)),
        Ok(free) => fail(
            format!(
                "{} MiB free; a download and unpack at [artifact] max_size may need {} MiB",
                free >> 20,
                need >> 20
            ),
            "free space, grow the volume, or lower [artifact] max_size",
        ),
        Err(e) => fail(e, "check that the release root's filesystem is mounted"),
    };
    report.add(name, verdict);
}

fn check_owner(report: &mut Report, config: &Config) {
    let Some(spec) = &config.release.owner else {
        return;
    };
    let verdict = match crate::owner::lookup(spec) {
        Ok(o) => Verdict::Ok(format!("uid {} gid {}", o.uid, o.gid)),
        Err(e) => fail(
            e,
            "create the user (deploys wait for it), or give [release] owner as uid:gid",
        ),
    };
    report.add(format!("release owner {spec}"), verdict);
}

fn check_state_dir(report: &mut Report, config: &Config) {
    let dir = &config.agent.state_dir;
    let probe = dir.join(".doctor");
    let result = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&probe, b""))
        .and_then(|_| std::fs::remove_file(&probe));
    report.add(
        format!("state directory {}", dir.display()),
        match result {
            Ok(()) => Verdict::Ok("writable".into()),
            Err(e) => fail(
                e,
                "run drover as root, or set [agent] state_dir to a writable directory",
            ),
        },
    );
}

/// `[metrics] textfile`: the directory where node_exporter's textfile collector reads, and
/// whether `drover.service`'s sandbox lets drover write there.
fn check_metrics(report: &mut Report, config: &Config) {
    let Some(path) = &config.metrics.textfile else {
        return;
    };
    let dir = crate::fsutil::parent(path);
    let fix = "set up node_exporter's textfile collector there, or point [metrics] textfile \
        at its directory; then restart drover (its sandbox lets it write only to a directory \
        that existed when it started)";
    let sandboxed = (crate::metrics::SANDBOX_DIRS.iter()).any(|d| dir == Path::new(d));
    let verdict = match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => fail(format!("{} is not a directory", dir.display()), fix),
        Err(e) => fail(format!("{}: {e}", dir.display()), fix),
        Ok(_) if sandboxed => Verdict::Ok(format!("{} exists", dir.display())),
        Ok(_) => Verdict::Note(format!(
            "{} exists; the shipped drover.service writes only to {}: the drop-in of `drover \
             sandbox-paths` (in /etc/systemd/system/drover.service.d/paths.conf; user-data \
             writes it) adds this one",
            dir.display(),
            crate::metrics::SANDBOX_DIRS.join(" and "),
        )),
    };
    report.add(format!("metrics {}", path.display()), verdict);
}

async fn check_health(report: &mut Report, config: &Config) {
    let Some(url) = &config.health.url else {
        report.add(
            "health",
            Verdict::Note("no [health] url: only unit states gate a deploy".into()),
        );
        return;
    };
    let verdict = match HttpProbe::new(url, Duration::from_secs(5)) {
        Err(e) => fail(e, "check [health] url"),
        Ok(probe) => match probe.probe().await {
            Ok(()) => Verdict::Ok(format!("{url} answers 2xx")),
            // The app may simply not be deployed yet: worth saying, not a failure.
            Err(e) => Verdict::Note(format!("{e} (fine before the first deploy)")),
        },
    };
    report.add("health", verdict);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_renders_one_line_per_check_and_fails_on_any_failure() {
        let mut r = Report::default();
        r.add("config", Verdict::Ok("valid".into()));
        r.add("health", Verdict::Note("not yet".into()));
        assert!(r.passed());
        assert_eq!(
            r.render(),
            "ok    config: valid\nnote  health: not yet\nall 2 checks passed\n"
        );
        r.add(
            "unit app.service",
            fail("load state is not-found", "install it"),
        );
        assert!(!r.passed());
        assert!(r
            .render()
            .ends_with("FAIL  unit app.service: load state is not-found\n      fix: install it\n1 of 3 checks failed\n"));
    }
}
