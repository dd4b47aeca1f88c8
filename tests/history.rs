//! `drover pause`, `drover history` and `drover fleet history` through the real parts: an
//! instance with real systemd and journald that an operator pauses, promotes past, resumes and
//! asks for its history, all with the commands run inside it; and agents on the host against
//! moto whose status objects `drover fleet history` reads back.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use drover_tests::host::{config_toml, drover_command, stderr, stdout};
use drover_tests::imds::Imds;
use drover_tests::{Instance, World};
use serde_json::Value;

const DEPLOY: Duration = Duration::from_secs(60);

fn about<'a>(events: &'a [Value], version: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["VERSION"] == version).collect()
}

/// `drover ARGS...` inside, with the unit's credentials (as an operator would on an instance
/// whose credentials come from its environment file).
fn drover_inside(instance: &Instance, args: &str) -> std::process::Output {
    let script = format!("set -a; . /etc/default/drover; exec drover {args}");
    instance.exec(&["sh", "-c", &script])
}

#[test]
fn a_paused_instance_holds_a_new_version_until_resumed_and_its_history_says_so() {
    let world = World::new("pause");
    let instance = world.boot_instance();
    world.release("1.0.0", true);
    instance.wait_for_events("deployed", 1, DEPLOY);

    let said = instance.exec_ok(&["drover", "pause", "--reason", "change freeze"]);
    assert!(
        said.starts_with("paused until drover resume (change freeze)"),
        "{said}"
    );
    let mode = instance.exec_ok(&["stat", "-c", "%a %U", "/var/lib/drover/pause.json"]);
    assert_eq!(mode.trim(), "600 root");
    let status = instance.status_json();
    assert_eq!(status["paused"]["reason"], "change freeze", "{status:#}");
    assert!(status["paused"]["until"].is_null(), "{status:#}");
    let text = instance.exec_ok(&["drover", "status"]);
    assert!(
        text.contains("paused:   until drover resume (change freeze)"),
        "{text}"
    );

    // Promoted while paused: polled, reported once, not deployed.
    world.release("2.0.0", true);
    let paused = instance.wait_for_events("deploy_paused", 1, DEPLOY);
    assert_eq!(paused[0]["VERSION"], "2.0.0", "{:#}", paused[0]);
    assert_eq!(paused[0]["PREVIOUS_VERSION"], "1.0.0");
    assert_eq!(paused[0]["REASON"], "change freeze");
    assert_eq!(paused[0]["PRIORITY"], "4");
    std::thread::sleep(Duration::from_secs(4)); // several polls at poll_interval = 1s
    assert_eq!(instance.journal_events("deploy_paused").len(), 1, "once");
    assert!(about(&instance.journal_events("deploy_started"), "2.0.0").is_empty());
    assert_eq!(instance.served(), "1.0.0");
    assert_eq!(
        instance.unit_property("drover.service", "StatusText"),
        "running 1.0.0; last pass: paused (drover resume ends it)"
    );
    let once = drover_inside(&instance, "once");
    assert_eq!(once.status.code(), Some(1), "{}", stderr(&once));
    assert!(stderr(&once).contains("deploy_paused"), "{}", stderr(&once));
    assert_eq!(instance.served(), "1.0.0");

    let said = instance.exec_ok(&["drover", "resume"]);
    assert!(said.starts_with("resumed"), "{said}");
    let deployed = instance.wait_for_events("deployed", 2, DEPLOY);
    assert_eq!(deployed[1]["VERSION"], "2.0.0");
    assert_eq!(instance.served(), "2.0.0");
    let resumed = instance.wait_for_events("deploy_resumed", 1, DEPLOY);
    assert_eq!(resumed[0]["REASON"], "change freeze");
    assert!(instance.status_json().get("paused").is_none());

    // A pause with --until lapses by itself.
    let said = instance.exec_ok(&["drover", "pause", "--until", "15s"]);
    assert!(said.starts_with("paused until 20"), "{said}");
    world.release("3.0.0", false);
    let paused = instance.wait_for_events("deploy_paused", 2, DEPLOY);
    assert_eq!(paused[1]["VERSION"], "3.0.0");
    assert!(paused[1]["UNTIL"].as_str().is_some(), "{:#}", paused[1]);
    let reverted = instance.wait_for_events("reverted", 1, DEPLOY);
    assert_eq!(reverted[0]["VERSION"], "3.0.0");
    let resumed = instance.wait_for_events("deploy_resumed", 2, DEPLOY);
    assert!(
        resumed[1]["MESSAGE"].as_str().unwrap().contains("lapsed"),
        "{:#}",
        resumed[1]
    );
    assert_eq!(instance.served(), "2.0.0");

    // The history: the deploys and the revert, newest first, each with its duration; the
    // paused and in-sync passes left nothing.
    let listing: Value =
        serde_json::from_str(&instance.exec_ok(&["drover", "history", "--json"])).unwrap();
    eprintln!("{listing:#}");
    assert_eq!(listing["schema"], 1);
    let entries = listing["entries"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = (entries.iter())
        .map(|e| {
            (
                e["result"].as_str().unwrap(),
                e["version"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("reverted", "3.0.0"),
            ("deployed", "2.0.0"),
            ("deployed", "1.0.0")
        ]
    );
    for e in entries {
        assert!(e["duration_ms"].as_u64().unwrap() > 0, "{e:#}");
        assert!(e["started"].as_str() <= e["ended"].as_str(), "{e:#}");
        assert!(e["parameter_version"].as_i64().unwrap() >= 1, "{e:#}");
    }
    assert!(
        entries[0]["error"].as_str().unwrap().contains("HTTP 500"),
        "{:#}",
        entries[0]
    );
    let last: Value =
        serde_json::from_str(&instance.exec_ok(&["drover", "history", "--json", "-n", "1"]))
            .unwrap();
    assert_eq!(last["entries"].as_array().unwrap().len(), 1);
    let text = instance.exec_ok(&["drover", "history"]);
    eprintln!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[1].contains("reverted")
            && lines[1].contains("3.0.0")
            && lines[1].contains("HTTP 500"),
        "{text}"
    );
    assert!(
        lines[3].contains("deployed") && lines[3].contains("1.0.0"),
        "{text}"
    );
}

/// An agent on the host with its own directory, instance id and `[fleet]` status objects.
struct Agent {
    config: PathBuf,
    imds: Imds,
}

impl Agent {
    fn new(world: &World, name: &str, id: &str) -> Agent {
        let imds = Imds::start(id);
        let dir = world.dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let endpoint = world.moto.endpoint();
        let fleet = "[fleet]\nstatus_prefix = \"status\"\n";
        let text = config_toml(world, &endpoint, &dir, "1s", "", fleet);
        let line = format!("endpoint_url = \"{endpoint}\"\n");
        let imds_line = format!("{line}metadata_endpoint_url = \"{}\"\n", imds.endpoint());
        let text = text.replacen(&line, &imds_line, 1);
        let config = dir.join("config.toml");
        std::fs::write(&config, text).unwrap();
        Agent { config, imds }
    }

    fn drover(&self, args: &[&str]) -> std::process::Output {
        drover_command(&self.config, args).output().unwrap()
    }

    fn once(&self) -> i32 {
        let out = self.drover(&["once"]);
        eprintln!("{}: {}", self.imds.instance_id(), stderr(&out));
        out.status.code().unwrap_or(-1)
    }
}

fn json(out: &std::process::Output) -> Value {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

fn fleet_history(agent: &Agent, version: &str) -> Value {
    json(&agent.drover(&["fleet", "history", version, "--json"]))
}

/// `(instance, result, source)` of each row.
fn rows(history: &Value) -> Vec<(String, String, String)> {
    let rows = history["entries"].as_array().unwrap().iter();
    rows.map(|r| {
        let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
        (text("instance"), text("result"), text("source"))
    })
    .collect()
}

#[test]
fn fleet_history_says_what_each_instance_did_with_a_version() {
    let world = World::new("fleet_history");
    let a = Agent::new(&world, "a", "i-0a15700000000001");
    let b = Agent::new(&world, "b", "i-0a15700000000002");
    world.release("1.0.0", true);
    assert_eq!((a.once(), b.once()), (0, 0));

    // 2.0.0 deploys on a; for b its digest no longer matches: rejected.
    world.release("2.0.0", true);
    assert_eq!(a.once(), 0);
    let wrong = format!("{}  2.0.0.tar.gz\n", drover_tests::sha256_hex(b"another"));
    (world.moto).put_object(
        &world.bucket,
        "releases/2.0.0.tar.gz.sha256",
        wrong.as_bytes(),
    );
    assert_eq!(b.once(), 1);
    let (_, request) = world.moto.get_parameter(&world.parameter).unwrap();

    // Both move on to 3.0.0: their status objects' last pass is about 3.0.0 now.
    world.release("3.0.0", true);
    assert_eq!((a.once(), b.once()), (0, 0));

    // An agent from before history (no `recent`), and an object that is not a report.
    let old = r#"{"instance":"i-0a15700000000003","running":"2.0.0","desired":"2.0.0",
                  "parameter_version":2,"outcome":"deployed","at":"2026-12-01T10:00:00Z"}"#;
    let key = "status/instances/i-0a15700000000003.json";
    world.moto.put_object(&world.bucket, key, old.as_bytes());
    let key = "status/instances/i-0a15700000000004.json";
    world.moto.put_object(&world.bucket, key, b"not a report");

    let out = a.drover(&["fleet", "history", "2.0.0", "--json"]);
    assert!(
        stderr(&out).contains("skipping a status object"),
        "{}",
        stderr(&out)
    );
    let history = json(&out);
    eprintln!("{history:#}");
    assert_eq!(history["schema"], 1);
    assert_eq!(
        (&history["instances"], &history["without_record"]),
        (&3.into(), &0.into())
    );
    let s = |t: &str| t.to_owned();
    assert_eq!(
        rows(&history),
        [
            (s(a.imds.instance_id()), s("deployed"), s("history")),
            (s(b.imds.instance_id()), s("rejected"), s("history")),
            (s("i-0a15700000000003"), s("deployed"), s("status")),
        ]
    );
    let entries = history["entries"].as_array().unwrap();
    assert_eq!(entries[1]["failed"], true);
    assert_eq!(entries[1]["parameter_version"], request);
    let error = entries[1]["error"].as_str().unwrap();
    assert!(error.contains("sha256 mismatch"), "{error}");
    assert!(entries[0]["duration_ms"].as_u64().unwrap() > 0);
    let text = stdout(&a.drover(&["fleet", "history", "2.0.0"]));
    eprintln!("{text}");
    assert!(
        text.starts_with("2.0.0: 3 instances reporting, 0 without a record of it\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{} rejected (parameter version {request}) at ",
            b.imds.instance_id()
        )),
        "{text}"
    );

    // b's own history says the same, and b's failure object stays when it moves on.
    let own = json(&b.drover(&["history", "--json"]));
    let results: Vec<&str> = (own["entries"].as_array().unwrap().iter())
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["deployed", "rejected", "deployed"]);
    let h3 = fleet_history(&a, "3.0.0");
    assert_eq!(
        (&h3["instances"], &h3["without_record"]),
        (&3.into(), &1.into())
    );

    // A paused agent: its status object and `fleet status` say so, `fleet history` shows it
    // holding, and `once` fails.
    let said = stdout(&b.drover(&["pause", "--until", "1h", "--reason", "db migration"]));
    assert!(said.starts_with("paused until "), "{said}");
    world.release("4.0.0", true);
    assert_eq!((a.once(), b.once()), (0, 1));
    let key = format!("status/instances/{}.json", b.imds.instance_id());
    let object: Value =
        serde_json::from_slice(&world.moto.get_object(&world.bucket, &key).unwrap()).unwrap();
    assert_eq!(object["outcome"], "paused", "{object:#}");
    assert_eq!(object["paused"]["reason"], "db migration", "{object:#}");
    assert_eq!(object["running"], "3.0.0");
    let status = json(&a.drover(&["fleet", "status", "4.0.0", "--json"]));
    assert_eq!(status["on_version"], 1, "{status:#}");
    let paused = status["paused"].as_array().unwrap();
    assert_eq!(paused.len(), 1, "{status:#}");
    assert_eq!(paused[0]["instance"], b.imds.instance_id());
    let text = stdout(&a.drover(&["fleet", "status", "4.0.0"]));
    assert!(
        text.contains(&format!("{} paused until ", b.imds.instance_id()))
            && text.contains("(db migration)"),
        "{text}"
    );
    let h4 = fleet_history(&a, "4.0.0");
    assert_eq!(
        rows(&h4),
        [
            (s(a.imds.instance_id()), s("deployed"), s("history")),
            (s(b.imds.instance_id()), s("paused"), s("status")),
        ]
    );
    assert_eq!(
        stdout(&b.drover(&["resume"])).trim(),
        "resumed: the next pass deploys what the parameter asks for"
    );
    assert_eq!(b.once(), 0);
}
