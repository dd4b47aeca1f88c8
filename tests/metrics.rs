//! `[metrics] textfile` on an instance, through the real parts: the shipped, sandboxed
//! `drover.service` writes the file where node_exporter's textfile collector looks, and the file
//! is read with Prometheus' own Python parser (`prometheus_client`, in the test venv), as a
//! scrape would read it. A collector directory that is missing, or made after drover started, is
//! a `metrics_failed` warning (once for each way it fails), never a failed pass.

use drover_tests::{wait_for, Instance, World};
use serde_json::Value;
use std::time::{Duration, SystemTime};

const DEPLOY: Duration = Duration::from_secs(60);
/// The directory of the README's example, one of the two the unit lets drover write to.
const COLLECTOR: &str = "/var/lib/node_exporter/textfile_collector";

/// The file's samples as `prometheus_client.parser` reads them: `(name, labels, value)`, and
/// each family's type. Panics when the parser refuses the text.
struct Scrape {
    samples: Vec<(String, Value, f64)>,
    types: serde_json::Map<String, Value>,
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples, types = [], {}
for family in text_string_to_metric_families(sys.stdin.read()):
    types[family.name] = family.type
    samples += [[s.name, s.labels, s.value] for s in family.samples]
print(json.dumps({"samples": samples, "types": types}))
"#;

fn parse(text: &str) -> Scrape {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let python = drover_tests::cache_dir().join("venv/bin/python3");
    let run = || {
        let mut child = Command::new(&python)
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text.as_bytes())?;
        }
        child.wait_with_output()
    };
    let out = run().unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "prometheus_client cannot parse the metrics ({}; run tests/scripts/setup.sh if it is \
         not installed):\n{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("the parser's answer is not JSON ({e}): {out:?}"));
    let samples = parsed["samples"].as_array().into_iter().flatten().map(|s| {
        let name = s[0].as_str().unwrap_or_default().to_string();
        (name, s[1].clone(), s[2].as_f64().unwrap_or(f64::NAN))
    });
    Scrape {
        samples: samples.collect(),
        types: parsed["types"].as_object().cloned().unwrap_or_default(),
    }
}

impl Scrape {
    /// The value of the one sample `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[k] == *v))
            .map(|(_, _, value)| *value)
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?}: {matching:?}");
        matching.first().copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in {:?}", self.samples))
    }

    /// The labels of the one sample `name`.
    fn labels(&self, name: &str) -> &Value {
        let mut found = self.samples.iter().filter(|(n, _, _)| n == name);
        let (_, labels, _) = found
            .next()
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.samples));
        assert!(found.next().is_none(), "{name} more than once");
        labels
    }
}

fn metrics_text(instance: &Instance) -> Option<String> {
    std::fs::read_to_string(instance.path(&format!("{COLLECTOR}/drover.prom"))).ok()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[test]
fn a_deploy_and_a_revert_in_the_textfile_prometheus_reads() {
    let world = World::new("metrics");
    let mut spec = world.boot_spec();
    spec.config_toml.push_str(&format!(
        "\n[metrics]\ntextfile = \"{COLLECTOR}/drover.prom\"\n"
    ));
    let instance = world.boot(spec);

    // No node_exporter yet: each pass's write fails the same way, said once; the passes go on.
    let failed = instance.wait_for_events("metrics_failed", 1, DEPLOY);
    let error = failed[0]["ERROR"].as_str().unwrap_or_default();
    assert!(
        error.contains(COLLECTOR) && error.contains("No such file or directory"),
        "{error}"
    );
    assert_eq!(failed[0]["PRIORITY"], "4");
    let polls = instance.journal_events("poll_failed").len();
    instance.wait_for_events("poll_failed", polls + 3, DEPLOY);
    assert_eq!(instance.journal_events("metrics_failed").len(), 1);

    // The directory made after drover started is read-only in its sandbox: said, with the fix.
    instance.exec_ok(&["mkdir", "-p", COLLECTOR]);
    let failed = instance.wait_for_events("metrics_failed", 2, DEPLOY);
    let error = failed[1]["ERROR"].as_str().unwrap_or_default();
    assert!(error.contains("Read-only file system"), "{error}");
    let message = failed[1]["MESSAGE"].as_str().unwrap_or_default();
    assert!(message.contains("ReadWritePaths="), "{message}");
    instance.exec_ok(&["systemctl", "restart", "drover"]);
    let started = unix_now();
    let text = wait_for(DEPLOY, "the metrics file", || metrics_text(&instance));
    let scrape = parse(&text);
    assert!(scrape.value("drover_start_time_seconds", &[]) >= started - 5.0);
    assert_eq!(scrape.get("drover_current_version_info", &[]), None);

    // A deploy, then a release that fails its health check and is reverted.
    world.release("1.0.0", true);
    instance.wait_for_events("deployed", 1, DEPLOY);
    let tarball = world.app_tarball("2.0.0", false);
    let size = std::fs::metadata(&tarball).unwrap().len();
    world.publish("2.0.0", &tarball);
    world.promote("2.0.0");
    instance.wait_for_events("reverted", 1, DEPLOY);
    let (_, parameter_version) = world.moto.get_parameter(&world.parameter).unwrap();

    // The pass that reverted wrote it as it ended (after its journal entry): wait for that.
    let scrape = wait_for(DEPLOY, "the revert in the metrics", || {
        let scrape = parse(&metrics_text(&instance)?);
        let reverted = ("result", "reverted");
        (scrape.get("drover_deploys_total", &[reverted]) == Some(1.0)).then_some(scrape)
    });
    // Shown with --nocapture or on failure.
    eprintln!(
        "{COLLECTOR}/drover.prom:\n{}",
        metrics_text(&instance).unwrap_or_default()
    );
    let info = |name| (scrape.labels(name), scrape.value(name, &[]));
    let desired = info("drover_desired_version_info");
    assert_eq!(desired.0["version"], "2.0.0");
    assert_eq!(
        desired.0["parameter_version"],
        parameter_version.to_string()
    );
    assert_eq!(desired.1, 1.0);
    assert_eq!(info("drover_current_version_info").0["version"], "1.0.0");
    let last = info("drover_last_deploy_info").0;
    assert_eq!(last["version"], "2.0.0");
    assert_eq!(last["result"], "reverted");
    for (result, count) in [
        ("deployed", 1.0),
        ("reverted", 1.0),
        ("revert_failed", 0.0),
        ("failed", 0.0),
        ("rejected", 0.0),
        ("aborted", 0.0),
    ] {
        let value = scrape.value("drover_deploys_total", &[("result", result)]);
        assert_eq!(value, count, "{result}");
    }
    // The deploy of 2.0.0 went through every phase, its health gate until it gave up.
    for phase in ["download", "verify", "unpack", "restart", "health"] {
        let seconds = scrape.value("drover_last_deploy_phase_seconds", &[("phase", phase)]);
        assert!(seconds > 0.0, "{phase}: {seconds}");
    }
    let health = scrape.value("drover_last_deploy_phase_seconds", &[("phase", "health")]);
    assert!(health >= 5.0, "the health gate's timeout is 10s: {health}");
    assert_eq!(scrape.value("drover_last_download_bytes", &[]), size as f64);
    assert!(scrape.value("drover_last_download_bytes_per_second", &[]) > 0.0);
    // Every pass read the parameter once; none was throttled. The pass that deployed 1.0.0 and
    // those in sync after it ended well; the ones since the revert skip the failed request.
    let polls = scrape.value("drover_polls_total", &[]);
    assert!(polls >= 3.0, "{polls}");
    assert_eq!(scrape.value("drover_polls_throttled_total", &[]), 0.0);
    let success = scrape.value("drover_last_success_timestamp_seconds", &[]);
    let reverted_at = scrape.value("drover_last_deploy_timestamp_seconds", &[]);
    assert!(
        started - 5.0 <= success && success <= reverted_at,
        "{success} {reverted_at}"
    );
    assert!(reverted_at <= unix_now() + 1.0);
    for (family, kind) in [
        ("drover_deploys", "counter"),
        ("drover_polls", "counter"),
        ("drover_environment_changes", "counter"),
        ("drover_last_deploy_phase_seconds", "gauge"),
        ("drover_desired_version_info", "gauge"),
    ] {
        assert_eq!(scrape.types[family], kind, "{family}");
    }
    // A sample outside the family its TYPE line declares would be read as one of its own.
    let untyped: Vec<_> = scrape
        .types
        .iter()
        .filter(|(_, t)| *t == "untyped")
        .collect();
    assert!(untyped.is_empty(), "{untyped:?}");

    // What the collector reads: root's, 0644, and nothing else of drover's beside it.
    let listing = instance.exec_ok(&["ls", "-lA", COLLECTOR]);
    let lines: Vec<&str> = listing
        .lines()
        .filter(|l| !l.starts_with("total"))
        .collect();
    assert_eq!(lines.len(), 1, "{listing}");
    assert!(lines[0].starts_with("-rw-r--r-- 1 root root "), "{listing}");
    assert_eq!(instance.journal_events("metrics_failed").len(), 2);
}

/// `drover doctor` with `[metrics]`: a collector directory that is missing fails with the fix;
/// one the shipped unit does not let drover write to is a note naming the drop-in.
#[test]
fn doctor_checks_the_collector_directory() {
    use drover_tests::host::{stdout, Host};
    let world = World::new("metrics-doctor");
    let endpoint = world.moto.endpoint();
    let collector = world.dir().join("collector");
    let extra = format!(
        "[metrics]\ntextfile = \"{}/drover.prom\"\n",
        collector.display()
    );
    let host = Host::with_config(world, &endpoint, &extra);
    let out = host.drover(&["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = format!(
        "FAIL  metrics {}/drover.prom: {}",
        collector.display(),
        collector.display()
    );
    assert!(text.contains(&line), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");
    assert!(
        text.contains("fix: set up node_exporter's textfile collector"),
        "{text}"
    );

    std::fs::create_dir(&collector).unwrap();
    let out = host.drover(&["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "note  metrics {}/drover.prom",
            collector.display()
        )) && text.contains("the drop-in of `drover sandbox-paths`"),
        "{text}"
    );
}
