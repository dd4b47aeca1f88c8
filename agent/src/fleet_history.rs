//! `drover fleet history VERSION`: what each instance did with one version, from the objects
//! under `[fleet] status_prefix` ([`crate::fleet`]). An instance's object says how its last pass
//! ended and, from agents that keep a history, its last few recorded outcomes (`recent`): a
//! deploy of VERSION is still there after the instance has moved on. The failure objects of
//! VERSION (kept per request) add the failures that have scrolled out of `recent`. Objects of
//! older agents, without `recent`, give their last pass if it was about VERSION.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::config::Config;
use crate::fleet::{self, Report, Status};
use crate::state::Verdict;
use crate::store::ArtifactStore;
use crate::version::Version;

/// What the fleet says about one version.
#[derive(Debug, Serialize)]
pub struct FleetHistory {
    pub schema: u32,
    pub version: String,
    /// How many instances' status objects were read.
    pub instances: usize,
    /// Of those, how many say nothing about the version.
    pub without_record: usize,
    /// By instance, oldest first.
    pub entries: Vec<Row>,
}

/// One thing an instance did with the version.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub instance: String,
    /// As `drover history` says it (`deployed`, `reverted`, `rolled_back`), or as the status
    /// object does for a pass that recorded nothing (`waiting`, `halted`, `paused`).
    pub result: String,
    /// Whether it counts against the version.
    pub failed: bool,
    pub parameter_version: Option<i64>,
    /// When it ended (RFC 3339).
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    /// `history` (the instance's recorded outcomes), `status` (its last pass) or `failure` (a
    /// failure object).
    pub source: &'static str,
}

/// The results of `drover history` that count against a version.
fn is_failure(result: Verdict) -> bool {
    matches!(
        result,
        Verdict::Reverted
            | Verdict::RevertFailed
            | Verdict::Failed
            | Verdict::Rejected
            | Verdict::Aborted
            | Verdict::RolledBack
            | Verdict::EnvironmentReverted
    )
}

fn status_row(r: &Report, source: &'static str) -> Row {
    Row {
        instance: r.instance.clone(),
        result: r.outcome.as_str().to_owned(),
        failed: r.is_failure(),
        parameter_version: r.parameter_version,
        at: r.at.clone(),
        duration_ms: None,
        error: r.error.clone(),
        source,
    }
}

impl FleetHistory {
    /// `reports` (the instances' objects) and `failures` (the version's failure objects),
    /// summed up for `version`.
    pub fn of(version: &str, reports: &[Report], failures: &[Report]) -> FleetHistory {
        let mut rows = Vec::new();
        for r in reports {
            let recorded = (r.recent.iter()).filter(|e| e.version.as_deref() == Some(version));
            rows.extend(recorded.map(|e| Row {
                instance: r.instance.clone(),
                result: e.result_name(),
                failed: is_failure(e.result),
                parameter_version: e.parameter_version,
                at: e.ended.clone(),
                duration_ms: Some(e.duration_ms),
                error: e.error.clone(),
                source: "history",
            }));
            // What the last pass says, unless it is in `recent` already: the passes that hold
            // the version back record nothing.
            let holding = matches!(
                r.outcome,
                Status::Waiting | Status::Halted | Status::Paused | Status::Unhealthy
            );
            if r.desired.as_deref() == Some(version) && (r.recent.is_empty() || holding) {
                rows.push(status_row(r, "status"));
            }
        }
        for f in failures {
            let known = rows.iter().any(|row| {
                row.instance == f.instance
                    && row.failed
                    && row.parameter_version == f.parameter_version
            });
            if !known && f.desired.as_deref() == Some(version) {
                rows.push(status_row(f, "failure"));
            }
        }
        rows.sort_by(|a, b| (&a.instance, &a.at).cmp(&(&b.instance, &b.at)));
        let with_record: BTreeSet<&str> = rows.iter().map(|r| r.instance.as_str()).collect();
        FleetHistory {
            schema: crate::history::SCHEMA,
            version: version.to_owned(),
            instances: reports.len(),
            without_record: (reports.iter())
                .filter(|r| !with_record.contains(r.instance.as_str()))
                .count(),
            entries: rows,
        }
    }

    /// As text; what the objects say is escaped (any instance may write any of them).
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}: {} instances reporting, {} without a record of it\n",
            self.version, self.instances, self.without_record
        );
        for row in &self.entries {
            let parameter = (row.parameter_version)
                .map(|n| format!("parameter version {n}"))
                .unwrap_or_else(|| "-".to_owned());
            let took = (row.duration_ms)
                .map(|ms| format!(", took {}", crate::history::duration(ms)))
                .unwrap_or_default();
            let error = (row.error.as_deref())
                .map(|e| format!(": {}", e.escape_debug()))
                .unwrap_or_default();
            out += &format!(
                "  {} {} ({parameter}) at {}{took}{error}\n",
                row.instance.escape_debug(),
                row.result,
                row.at.escape_debug()
            );
        }
        out
    }
}

/// `drover fleet history VERSION [--json]`: the text to print.
pub async fn command(config: &Config, version: &str, json: bool) -> Result<String, String> {
    let version = Version::parse(version).map_err(|e| e.to_string())?;
    let prefix = (config.fleet.status_prefix.as_deref())
        .ok_or("[fleet] status_prefix is not set in the config: instances write no status")?;
    let sdk = crate::aws::sdk_config(&config.aws).await;
    let store = crate::aws::S3Store::new(&sdk, &config.aws, &config.artifact.bucket);
    let history = read(&store, prefix, version.as_str()).await?;
    Ok(match json {
        true => serde_json::to_string_pretty(&history).map_err(|e| e.to_string())? + "\n",
        false => history.render(),
    })
}

/// Reads the status objects under `prefix` and the failure objects of `version`.
pub async fn read<S: ArtifactStore>(
    store: &S,
    prefix: &str,
    version: &str,
) -> Result<FleetHistory, String> {
    let instances = (store
        .list_keys(&fleet::instances_prefix(prefix), usize::MAX)
        .await)
        .map_err(|e| e.to_string())?;
    let failures_prefix = fleet::version_failures_prefix(prefix, version);
    let failures =
        (store.list_keys(&failures_prefix, usize::MAX).await).map_err(|e| e.to_string())?;
    let reports = fleet::read_reports(store, instances).await;
    let failures = fleet::read_reports(store, failures).await;
    Ok(FleetHistory::of(version, &reports, &failures))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Entry;

    fn report(instance: &str, desired: &str, outcome: Status, recent: Vec<Entry>) -> Report {
        Report {
            instance: instance.into(),
            running: Some("1.0".into()),
            desired: Some(desired.into()),
            parameter_version: Some(3),
            outcome,
            position: None,
            turn_at: None,
            error: outcome.is_failure().then(|| "HTTP 500".into()),
            at: "2026-12-01T10:05:00Z".into(),
            paused: None,
            recent,
        }
    }

    fn entry(version: &str, result: Verdict, ended: &str) -> Entry {
        Entry {
            version: Some(version.into()),
            parameter_version: Some(3),
            result,
            error: None,
            started: "2026-12-01T09:59:00Z".into(),
            ended: ended.into(),
            duration_ms: 4200,
        }
    }

    #[test]
    fn each_instance_s_outcomes_for_the_version() {
        let reports = [
            // Deployed 2.0, then moved on to 3.0: its history still says so.
            report(
                "i-1",
                "3.0",
                Status::InSync,
                vec![
                    entry("3.0", Verdict::Deployed, "2026-12-01T11:00:00Z"),
                    entry("2.0", Verdict::Deployed, "2026-12-01T10:00:00Z"),
                ],
            ),
            // An older agent: no history, its last pass was about 2.0.
            report("i-2", "2.0", Status::Reverted, vec![]),
            // Held by a pause, with an earlier revert of 2.0 recorded.
            report(
                "i-3",
                "2.0",
                Status::Paused,
                vec![entry("2.0", Verdict::Reverted, "2026-12-01T10:01:00Z")],
            ),
            // Nothing about 2.0.
            report("i-4", "1.0", Status::InSync, vec![]),
        ];
        let failures = [
            // Known from i-2's and i-3's objects already.
            report("i-2", "2.0", Status::Reverted, vec![]),
            report("i-3", "2.0", Status::Reverted, vec![]),
            // An instance whose object is gone, or whose failure scrolled out of `recent`.
            report("i-5", "2.0", Status::Rejected, vec![]),
        ];
        let h = FleetHistory::of("2.0", &reports, &failures);
        let rows: Vec<_> = (h.entries.iter())
            .map(|r| (r.instance.as_str(), r.result.as_str(), r.failed, r.source))
            .collect();
        assert_eq!(
            rows,
            [
                ("i-1", "deployed", false, "history"),
                ("i-2", "reverted", true, "status"),
                ("i-3", "reverted", true, "history"),
                ("i-3", "paused", false, "status"),
                ("i-5", "rejected", true, "failure"),
            ]
        );
        assert_eq!((h.instances, h.without_record), (4, 1));
        assert_eq!(h.entries[0].duration_ms, Some(4200));
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["schema"], 1);
        let text = h.render();
        assert!(
            text.contains("i-1 deployed (parameter version 3) at 2026-12-01T10:00:00Z, took 4.2s"),
            "{text}"
        );
        assert!(
            text.contains("i-2 reverted (parameter version 3) at 2026-12-01T10:05:00Z: HTTP 500"),
            "{text}"
        );
    }

    #[test]
    fn what_the_objects_say_is_escaped() {
        let mut r = report("i-1\n\u{1b}[2J", "2.0", Status::Failed, vec![]);
        r.error = Some("bad\nline".into());
        let text = FleetHistory::of("2.0", &[r], &[]).render();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            text.contains("i-1\\n\\u{1b}[2J") && text.contains("bad\\nline"),
            "{text}"
        );
    }
}
