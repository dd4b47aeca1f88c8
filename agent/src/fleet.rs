//! The fleet's memory, without a server: each instance writes small status objects under
//! `[fleet] status_prefix` in the artifact bucket, and reads the failures of a request before it
//! adopts it. `drover fleet status` reads them back for operators.
//!
//! Layout, under the prefix (docs/FLEET.md):
//! - `instances/{instance}.json`: what the instance runs and how its last pass ended, replaced
//!   whenever that changes;
//! - `failures/{version}/{parameter version}/{instance}.json`: written once when a deploy of that
//!   request fails on the instance. Counting these is one `ListObjectsV2` of at most
//!   `max_failures` keys, however large the fleet.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// What one instance says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub instance: String,
    /// The release `current` points at.
    pub running: Option<String>,
    /// The version the parameter asks for, and the request's parameter version.
    pub desired: Option<String>,
    pub parameter_version: Option<i64>,
    /// How the last pass that said something new ended.
    pub outcome: Status,
    /// Its place in the rollout of `desired`, and when its turn comes, while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339, UTC.
    pub at: String,
    /// `drover pause` holds the instance (since, until, reason); left out otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<crate::pause::Pause>,
    /// The instance's last few recorded outcomes (`drover history`), newest first, for
    /// `drover fleet history`; left out by agents that keep none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<crate::history::Entry>,
}

impl Report {
    pub fn is_failure(&self) -> bool {
        self.outcome.is_failure()
    }
}

/// How an instance's last pass ended, as its status object says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Deployed,
    InSync,
    /// `drover once` found the running version unhealthy.
    Unhealthy,
    /// Waiting for its turn in a rollout.
    Waiting,
    /// Holding: too many instances failed the request.
    Halted,
    /// Holding: `drover pause`.
    Paused,
    Reverted,
    /// Failed with nothing to go back to.
    Failed,
    RevertFailed,
    Rejected,
    Aborted,
    /// Written by a newer agent.
    #[serde(other)]
    Other,
}

impl Status {
    /// The outcomes that count against a request.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Status::Reverted
                | Status::Failed
                | Status::RevertFailed
                | Status::Rejected
                | Status::Aborted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Deployed => "deployed",
            Status::InSync => "in_sync",
            Status::Unhealthy => "unhealthy",
            Status::Waiting => "waiting",
            Status::Halted => "halted",
            Status::Paused => "paused",
            Status::Reverted => "reverted",
            Status::Failed => "failed",
            Status::RevertFailed => "revert_failed",
            Status::Rejected => "rejected",
            Status::Aborted => "aborted",
            Status::Other => "other",
        }
    }
}

/// `prefix` as configured, ending in `/` unless empty.
fn dir(prefix: &str) -> String {
    match prefix {
        "" => String::new(),
        p if p.ends_with('/') => p.to_owned(),
        p => format!("{p}/"),
    }
}

/// Where `[fleet] max_in_flight`'s lease slots are (`lease.rs`).
pub fn leases_prefix(prefix: &str) -> String {
    format!("{}leases/", dir(prefix))
}

pub fn instances_prefix(prefix: &str) -> String {
    format!("{}instances/", dir(prefix))
}

pub fn instance_key(prefix: &str, instance: &str) -> String {
    format!("{}{instance}.json", instances_prefix(prefix))
}

pub fn failures_prefix(prefix: &str, version: &str, parameter_version: i64) -> String {
    format!(
        "{}{parameter_version}/",
        version_failures_prefix(prefix, version)
    )
}

/// The failure objects of every request for `version` (`drover fleet history`).
pub fn version_failures_prefix(prefix: &str, version: &str) -> String {
    format!("{}failures/{version}/", dir(prefix))
}

pub fn failure_key(prefix: &str, version: &str, parameter_version: i64, instance: &str) -> String {
    format!(
        "{}{instance}.json",
        failures_prefix(prefix, version, parameter_version)
    )
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("no instance identity is configured")]
    NotConfigured,
    #[error("cannot read the instance id from IMDS: {0}")]
    Unreachable(String),
    #[error("IMDS did not give the instance id within {0} s")]
    Timeout(u64),
    #[error("IMDS gave an instance id of an unexpected form: {0:?}")]
    Malformed(String),
}

/// Asks where the instance id lives (IMDS, through the lookup `aws.rs` builds) once.
pub type Lookup = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Result<String, IdentityError>>>>>;

/// Where this instance's id comes from: looked up once, then remembered.
pub enum Identity {
    /// Given (tests of the reconcile loop).
    Fixed(String),
    Lookup {
        lookup: Lookup,
        known: Option<String>,
    },
}

impl Identity {
    pub fn lookup(lookup: Lookup) -> Self {
        Identity::Lookup {
            lookup,
            known: None,
        }
    }

    pub async fn instance_id(&mut self) -> Result<String, IdentityError> {
        match self {
            Identity::Fixed(id) => Ok(id.clone()),
            Identity::Lookup {
                known: Some(id), ..
            } => Ok(id.clone()),
            Identity::Lookup { lookup, known } => {
                let id = checked_id(lookup().await?)?;
                *known = Some(id.clone());
                Ok(id)
            }
        }
    }
}

/// The id as IMDS gave it, trimmed; it becomes part of object keys, so it must look like one
/// (`i-` and hex digits on EC2).
fn checked_id(id: String) -> Result<String, IdentityError> {
    let id = id.trim().to_owned();
    let fits = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if id.is_empty() || id.len() > 64 || !id.chars().all(fits) {
        return Err(IdentityError::Malformed(id));
    }
    Ok(id)
}

/// `drover fleet status`: the instances' reports, summed up for one version.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub version: String,
    /// The request (parameter version) that asks for it, when the parameter does now: reports
    /// about earlier requests for the same version do not count.
    pub parameter_version: Option<i64>,
    /// The failure objects of that request: what an instance counts before it adopts it.
    pub failures_counted: Option<usize>,
    pub instances: usize,
    /// How many instances run each version.
    pub running: BTreeMap<String, usize>,
    /// Running `version`.
    pub on_version: usize,
    /// Asked for `version`, waiting for their turn in the rollout.
    pub waiting: usize,
    /// Asked for `version`, holding because too many instances failed it.
    pub halted: usize,
    /// Asked for `version`, held by `drover pause`.
    pub paused: Vec<Report>,
    /// Failed `version` (and went back, or not).
    pub failed: Vec<Report>,
    /// Have not reported on `version` yet.
    pub not_reported: usize,
    /// `[fleet] max_in_flight`: the lease slots held now, `(key, lease)` (left out without).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leases: Option<Vec<(String, crate::lease::Lease)>>,
}

impl Summary {
    /// Sums up `reports` for `version`, asked for by the request `parameter_version` if known.
    pub fn of(version: &str, parameter_version: Option<i64>, reports: &[Report]) -> Summary {
        let mut s = Summary {
            version: version.to_owned(),
            parameter_version,
            instances: reports.len(),
            ..Summary::default()
        };
        for r in reports {
            let running = r.running.clone().unwrap_or_else(|| "(none)".into());
            *s.running.entry(running).or_default() += 1;
            let asked = r.desired.as_deref() == Some(version)
                && parameter_version.is_none_or(|n| r.parameter_version == Some(n));
            if r.running.as_deref() == Some(version) && !r.is_failure() {
                s.on_version += 1;
            } else if asked && r.is_failure() {
                s.failed.push(r.clone());
            } else if asked && r.outcome == Status::Halted {
                s.halted += 1;
            } else if asked && r.outcome == Status::Paused {
                s.paused.push(r.clone());
            } else if asked && r.outcome == Status::Waiting {
                s.waiting += 1;
            } else {
                s.not_reported += 1;
            }
        }
        s
    }

    pub fn render(&self) -> String {
        let mut out = format!("{} instances reporting\n", self.instances);
        out.push_str("running:\n");
        for (version, n) in &self.running {
            out.push_str(&format!("  {version:<24} {n}\n"));
        }
        match self.parameter_version {
            Some(n) => out.push_str(&format!("{} (parameter version {n}):\n", self.version)),
            None => out.push_str(&format!("{}:\n", self.version)),
        }
        for (what, n) in [
            ("on it", self.on_version),
            ("waiting for their turn", self.waiting),
            ("halted", self.halted),
            ("paused", self.paused.len()),
            ("failed", self.failed.len()),
            ("not reported yet", self.not_reported),
        ] {
            out.push_str(&format!("  {what:<24} {n}\n"));
        }
        if let Some(n) = self.failures_counted {
            out.push_str(&format!("  {:<24} {n}\n", "failures counted"));
        }
        if let Some(leases) = &self.leases {
            out.push_str(&format!("lease slots held:          {}\n", leases.len()));
            for (key, lease) in leases {
                let name = key.rsplit('/').next().unwrap_or(key);
                out.push_str(&format!(
                    "  {} {} {} until {}\n",
                    name.escape_debug(),
                    lease.instance.escape_debug(),
                    lease.version.as_deref().unwrap_or("-").escape_debug(),
                    lease.expires.escape_debug()
                ));
            }
        }
        // Any instance may write any status object (docs/IAM.md): their text is escaped.
        for r in &self.paused {
            let pause = r.paused.as_ref().map(|p| p.describe()).unwrap_or_default();
            out.push_str(&format!(
                "  {} paused {}\n",
                r.instance.escape_debug(),
                pause.escape_debug()
            ));
        }
        for r in &self.failed {
            out.push_str(&format!(
                "  {} {} at {}: {}\n",
                r.instance.escape_debug(),
                r.outcome.as_str(),
                r.at.escape_debug(),
                r.error.as_deref().unwrap_or("").escape_debug()
            ));
        }
        out
    }
}

/// How many status objects are read at once: a fleet of 10,000 is 10,000 small GETs.
const IN_FLIGHT: usize = 32;
/// The largest status object read.
const MAX_OBJECT: usize = 64 << 10;

/// The objects at `keys`, [`IN_FLIGHT`] GETs at a time, in the keys' order; one that cannot be
/// read or is not a status object is skipped with a warning.
pub async fn read_reports<S: crate::store::ArtifactStore>(
    store: &S,
    keys: Vec<String>,
) -> Vec<Report> {
    use futures_util::StreamExt;
    let reads = futures_util::stream::iter(keys).map(|key| async move {
        let body = crate::store::get_small(store, &key, MAX_OBJECT)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice::<Report>(&body).map_err(|e| format!("{key}: {e}"))
    });
    let read: Vec<Result<Report, String>> = reads.buffered(IN_FLIGHT).collect().await;
    let mut reports = Vec::new();
    for report in read {
        match report {
            Ok(report) => reports.push(report),
            Err(e) => eprintln!("drover: skipping a status object: {}", e.escape_debug()),
        }
    }
    reports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_objects_and_lease_slots_share_the_prefix_as_a_directory() {
        // A prefix written without its `/` is one directory, not a start of names.
        for prefix in ["drover/status", "drover/status/"] {
            assert_eq!(instances_prefix(prefix), "drover/status/instances/");
            assert_eq!(leases_prefix(prefix), "drover/status/leases/");
        }
    }

    fn report(instance: &str, running: &str, desired: &str, outcome: Status) -> Report {
        Report {
            instance: instance.into(),
            running: Some(running.into()),
            desired: Some(desired.into()),
            parameter_version: Some(3),
            outcome,
            position: None,
            turn_at: None,
            error: None,
            at: "2026-12-01T10:00:00Z".into(),
            paused: None,
            recent: Vec::new(),
        }
    }

    #[test]
    fn keys_live_under_the_prefix() {
        assert_eq!(instance_key("fleet", "i-1"), "fleet/instances/i-1.json");
        assert_eq!(instance_key("fleet/", "i-1"), "fleet/instances/i-1.json");
        assert_eq!(
            failure_key("s/", "2.0.0", 7, "i-1"),
            "s/failures/2.0.0/7/i-1.json"
        );
        assert!(failure_key("s", "2.0.0", 7, "i-1").starts_with(&failures_prefix("s", "2.0.0", 7)));
        assert_ne!(
            failures_prefix("s", "2.0.0", 7),
            failures_prefix("s", "2.0.0", 8)
        );
    }

    #[test]
    fn instance_ids_must_look_like_one() {
        assert_eq!(checked_id(" i-0abc\n".into()), Ok("i-0abc".into()));
        for bad in ["", "i-1/../x", "<html>", &"i".repeat(65)] {
            assert_eq!(
                checked_id(bad.into()),
                Err(IdentityError::Malformed(bad.trim().into()))
            );
        }
    }

    #[test]
    fn outcomes_are_snake_case_and_a_newer_agent_s_are_read_as_other() {
        let mut r = report("i-1", "1", "2", Status::RevertFailed);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["outcome"], "revert_failed");
        assert_eq!(Status::RevertFailed.as_str(), "revert_failed");
        r.outcome = Status::Other;
        let mut text = serde_json::to_string(&r).unwrap();
        text = text.replace("\"other\"", "\"paused_by_operator\"");
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back.outcome, Status::Other);
        assert!(!back.is_failure());
    }

    #[test]
    fn summary_counts_each_instance_once_for_the_version() {
        let reports = [
            report("i-1", "2", "2", Status::Deployed),
            report("i-2", "1", "2", Status::Reverted),
            report("i-3", "1", "2", Status::Halted),
            report("i-4", "1", "2", Status::Waiting),
            report("i-5", "1", "1", Status::InSync),
        ];
        let s = Summary::of("2", None, &reports);
        assert_eq!(
            (
                s.instances,
                s.on_version,
                s.waiting,
                s.halted,
                s.not_reported
            ),
            (5, 1, 1, 1, 1)
        );
        assert_eq!(s.failed.len(), 1);
        assert_eq!(s.running.get("1"), Some(&4));
        let text = s.render();
        assert!(text.contains("i-2 reverted"), "{text}");
        // Reports about another request for the same version are not about this one.
        let s = Summary::of("2", Some(4), &reports);
        assert_eq!((s.on_version, s.failed.len(), s.not_reported), (1, 0, 4));
        let back: Report =
            serde_json::from_str(&serde_json::to_string(&reports[1]).unwrap()).unwrap();
        assert_eq!(back, reports[1]);
    }

    #[test]
    fn paused_instances_are_named_with_their_pause_and_old_objects_still_read() {
        let mut paused = report("i-1", "1", "2", Status::Paused);
        paused.paused = Some(crate::pause::Pause {
            since: "2026-12-01T09:00:00Z".into(),
            until: Some("2026-12-01T18:00:00Z".into()),
            reason: Some("freeze\n".into()),
        });
        let in_sync = report("i-2", "2", "2", Status::Paused);
        let s = Summary::of("2", None, &[paused.clone(), in_sync]);
        assert_eq!((s.paused.len(), s.on_version, s.not_reported), (1, 1, 0));
        let text = s.render();
        assert!(
            text.contains("i-1 paused until 2026-12-01T18:00:00Z (freeze\\n)"),
            "{text}"
        );
        let json = serde_json::to_value(&paused).unwrap();
        assert_eq!(json["outcome"], "paused");
        assert_eq!(json["paused"]["reason"], "freeze\n");
        assert!(json.get("recent").is_none(), "left out when empty");
        // What an agent before pauses and history wrote.
        let old = r#"{"instance":"i-3","running":"1","desired":"1","parameter_version":2,
                      "outcome":"in_sync","at":"2026-12-01T10:00:00Z"}"#;
        let old: Report = serde_json::from_str(old).unwrap();
        assert_eq!((old.paused, old.recent.len()), (None, 0));
    }
}
