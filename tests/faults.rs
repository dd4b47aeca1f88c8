//! Network and service faults between the agent and AWS (issue #3), injected by the fault proxy
//! of `harness/faultproxy.rs` in front of moto. For each fault the agent keeps running, logs the
//! right event naming the parameter or key and the cause, backs off with jitter, retries on a
//! later cycle and changes nothing on disk until a good artifact arrives.
//!
//! The agents run on the host (`harness/host.rs`) with a 100 ms poll interval and a 4 s download
//! timeout, so a run of failed cycles takes seconds. Releases are published and promoted straight
//! to moto; only the agent goes through the proxy. With `--nocapture` each test prints what the
//! proxy saw, cycle by cycle: the figures of docs/RELIABILITY.md.
//!
//! The poll's `GetParameter` is one request per cycle: throttling and failures are retried by the
//! agent's own backoff. For S3 the AWS SDK retries throttling, 5xx and broken responses itself
//! (standard mode, 3 attempts) within one cycle; the tests pin those counts, so a change of the
//! SDK's retry policy shows here.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::faultproxy::{Fault, FaultProxy, Match, Seen};
use drover_tests::host::{stderr, Host};
use drover_tests::World;

const POLL: Duration = Duration::from_millis(100);
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(4);
/// Slower than [`DOWNLOAD_TIMEOUT`].
const SLOW: Fault = Fault::Slow(Duration::from_secs(6));
const FLIP: Fault = Fault::FlipByte {
    strip_checksums: false,
};

/// A host whose agent goes through `proxy`, polling every [`POLL`], with [`DOWNLOAD_TIMEOUT`].
fn host_behind(proxy: &FaultProxy, label: &str) -> Host {
    let host = Host::with_artifact_keys(
        World::new(label),
        &proxy.endpoint(),
        &format!("download_timeout = \"{}s\"", DOWNLOAD_TIMEOUT.as_secs()),
        "",
    );
    // The host config has its own [source]: tighten its poll interval in place.
    let text = std::fs::read_to_string(&host.config).unwrap();
    let tightened = text.replacen(
        "poll_interval = \"1s\"",
        &format!("poll_interval = \"{}ms\"", POLL.as_millis()),
        1,
    );
    assert_ne!(text, tightened);
    std::fs::write(&host.config, tightened).unwrap();
    host
}

/// A host running 1.0.0, deployed through the proxy with no fault, and 2.0.0 published and
/// promoted: the next good cycle deploys it.
fn host_with_an_upgrade_waiting(proxy: &FaultProxy, label: &str) -> Host {
    let host = host_behind(proxy, label);
    host.world.release("1.0.0", true);
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(host.current(), "releases/1.0.0");
    host.world.release("2.0.0", true);
    host
}

/// What a fault must leave alone: `current`, `releases/`, an empty `.staging/`, and the state.
#[derive(Debug, PartialEq)]
struct Disk {
    current: String,
    releases: Vec<String>,
    staging: Vec<String>,
    status: serde_json::Value,
}

fn disk(host: &Host) -> Disk {
    let (releases, staging) = host.release_dirs();
    Disk {
        current: host.current(),
        releases,
        staging,
        status: on_disk(host.status()),
    }
}

/// `drover status --json` without what it reads from the parameter at the time.
fn on_disk(mut status: serde_json::Value) -> serde_json::Value {
    if let Some(object) = status.as_object_mut() {
        object.remove("desired");
        object.remove("desired_error");
    }
    status
}

/// The log lines of `event` in `log`, oldest first.
fn events(log: &str, event: &str) -> Vec<String> {
    let needle = format!("event=\"{event}\"");
    log.lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// An ERROR must be one readable line, not the SDK's debug dump of the raw response.
fn assert_readable(line: &str) {
    assert!(
        !line.contains("SdkBody") && !line.contains("raw: Response") && line.len() < 800,
        "unreadable error: {line}"
    );
}

/// `drover run`, its stderr in a file; stopped with SIGTERM by [`Daemon::stop`], killed if the
/// test fails first.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(host: &Host) -> Daemon {
        let log = host.world.dir().join("daemon.log");
        let child = host
            .command(&["run"])
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_events(&self, event: &str, count: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = events(&self.log(), event);
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {count} {event} events, got {}. Log:\n{}",
                found.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the agent exited. Log:\n{}",
            self.log()
        );
    }

    /// SIGTERM; the agent must stop cleanly (exit 0).
    fn stop(mut self) {
        self.assert_running();
        Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "Log:\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's pause after `failures` transient failures in a row is in `[0, base)` ("full
/// jitter", `plan::Backoff`); after a success or a "not there yet" it is `POLL` plus up to
/// 10 %.
fn backoff_base(failures: u32) -> Duration {
    if failures == 0 {
        return POLL * 2;
    }
    std::cmp::min(POLL * 2u32.pow(failures), POLL * 32)
}

/// What a pause may exceed its window by: the time the agent takes to handle a failed cycle and
/// to start the next one, on a busy test machine.
const SLACK: Duration = Duration::from_millis(250);

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn describe(seen: &Seen) -> String {
    let what = match &seen.target {
        Some(target) => target.clone(),
        None => format!("{} {}", seen.method, seen.path),
    };
    match seen.fault {
        Some(f) => format!("{what}  [{f:?}]"),
        None => what,
    }
}

/// The agent's cycles as the proxy saw them: each starts with a new `GetParameter` call.
fn cycles(seen: &[Seen]) -> Vec<Vec<Seen>> {
    let get = Match::ssm("GetParameter");
    let mut cycles: Vec<Vec<Seen>> = Vec::new();
    for s in seen {
        let new_call = get.matches(s)
            && cycles.last().is_none_or(|c| {
                c.first().and_then(|f| f.invocation.as_ref()) != s.invocation.as_ref()
            });
        match cycles.last_mut() {
            Some(cycle) if !new_call => cycle.push(s.clone()),
            _ => cycles.push(vec![s.clone()]),
        }
    }
    cycles
}

/// The pause between the last request of each cycle and the first of the next.
fn pauses(cycles: &[Vec<Seen>]) -> Vec<Duration> {
    cycles
        .windows(2)
        .filter_map(|w| Some(w[1].first()?.at.duration_since(w[0].last()?.at)))
        .collect()
}

/// Prints the cycles, with each request's time since the first: the figures for the docs.
fn print_cycles(test: &str, cycles: &[Vec<Seen>]) {
    let Some(t0) = cycles.first().and_then(|c| c.first()).map(|s| s.at) else {
        return;
    };
    eprintln!("--- {test}: the agent's cycles as the proxy saw them");
    for (i, cycle) in cycles.iter().enumerate() {
        for (j, s) in cycle.iter().enumerate() {
            let n = if j == 0 {
                format!("{i:>2}")
            } else {
                "  ".into()
            };
            eprintln!(
                "{n} {:>6} ms  attempt {}  {}",
                ms(s.at.duration_since(t0)),
                s.attempt.unwrap_or(0),
                describe(s)
            );
        }
    }
}

/// The fraction of the jitter window each pause took.
fn jitter(pause: Duration, base: Duration) -> f64 {
    pause.as_secs_f64() / base.as_secs_f64()
}

#[test]
fn ssm_throttling_is_one_request_per_poll_with_full_jitter_backoff_then_converges() {
    let proxy = FaultProxy::in_front_of_moto();
    let host = host_with_an_upgrade_waiting(&proxy, "throttle");
    let before = disk(&host);
    let skip = proxy.seen().len();
    proxy.inject_always(Match::ssm("GetParameter"), Fault::Throttle);
    let mut daemon = Daemon::start(&host);

    // Ten throttled cycles, and the eleventh begun: ten pauses to measure, the last five in the
    // capped window of 32 polls.
    let failed = daemon.wait_for_events("poll_failed", 10, Duration::from_secs(60));
    let cycles = drover_tests::wait_for(Duration::from_secs(10), "an eleventh poll", || {
        let cycles = cycles(&proxy.seen()[skip..]);
        (cycles.len() >= 11).then_some(cycles)
    });
    daemon.assert_running();
    for line in &failed {
        assert!(
            line.contains(&host.world.parameter)
                && line.contains("ThrottlingException: Rate exceeded (HTTP 400)"),
            "{line}"
        );
        assert_readable(line);
    }
    assert_eq!(disk(&host), before, "throttling changed something on disk");
    print_cycles("ssm throttling", &cycles);

    for cycle in &cycles[..10] {
        let attempts: Vec<_> = cycle.iter().map(|s| (s.attempt, s.fault)).collect();
        assert_eq!(
            attempts,
            [(Some(1), Some(Fault::Throttle))],
            "one GetParameter per poll, never retried within it"
        );
    }
    let pauses = pauses(&cycles[..11]);
    let mut fractions = Vec::new();
    for (i, pause) in pauses.iter().enumerate() {
        let failures = i as u32 + 1;
        let base = backoff_base(failures);
        eprintln!(
            "pause after failure {failures}: {} ms (window 0..{} ms)",
            ms(*pause),
            ms(base)
        );
        assert!(
            *pause <= base + SLACK,
            "waited {pause:?}, beyond the window of {base:?}"
        );
        fractions.push(jitter(*pause, base));
    }
    // Polling at the normal pace would take 10 × 100 ms; the windows add up to 17.4 s, and ten
    // uniform picks from them fall under 2 s with a probability below 0.1 %.
    let total: Duration = pauses.iter().sum();
    assert!(total >= Duration::from_secs(2), "no backoff: {pauses:?}");
    assert!(
        fractions.iter().any(|f| (f - fractions[0]).abs() > 0.02),
        "no jitter: every pause is the same part of its window: {fractions:?}"
    );

    proxy.clear();
    daemon.wait_for_events("deployed", 1, Duration::from_secs(20));
    assert_eq!(host.current(), "releases/2.0.0");
    daemon.stop();
}

#[test]
fn ssm_faults_fail_the_pass_and_change_nothing() {
    let proxy = FaultProxy::in_front_of_moto();
    let host = host_with_an_upgrade_waiting(&proxy, "ssm");
    let before = disk(&host);
    let get = Match::ssm("GetParameter");
    // (fault, what the error says, how many requests: one, the SDK does not retry the poll)
    let cases = [
        (
            Fault::Status(500),
            "InternalServerError: Internal server error (HTTP 500)",
            1,
        ),
        (
            Fault::Status(503),
            "ServiceUnavailable: Service unavailable (HTTP 503)",
            1,
        ),
        (
            Fault::Denied,
            "access denied: ssm:GetParameter on parameter",
            1,
        ),
        (Fault::NotFound, "not found", 1),
        (Fault::ResetMidBody, "Connection reset by peer", 1),
        (
            Fault::Truncate,
            "end of file before message length reached",
            1,
        ),
        (FLIP, "invalid utf-8", 1),
    ];
    for (fault, says, requests) in cases {
        let skip = proxy.seen().len();
        proxy.inject_always(get.clone(), fault);
        let started = Instant::now();
        let out = host.drover(&["once"]);
        let took = started.elapsed();
        proxy.clear();
        let seen = proxy.seen().split_off(skip);
        eprintln!(
            "--- once with {fault:?} on GetParameter: exit {:?} after {} ms, {} request(s) at {:?} ms\n{}",
            out.status.code(),
            ms(took),
            seen.len(),
            seen.iter()
                .map(|s| ms(s.at.duration_since(seen[0].at)))
                .collect::<Vec<_>>(),
            stderr(&out)
        );
        assert_eq!(out.status.code(), Some(1), "{fault:?}: {}", stderr(&out));
        let failed = events(&stderr(&out), "poll_failed");
        assert_eq!(failed.len(), 1, "{fault:?}: {}", stderr(&out));
        assert!(
            failed[0].contains(&format!("parameter {}", host.world.parameter))
                && failed[0].contains(says),
            "{fault:?}: {}",
            failed[0]
        );
        assert_readable(&failed[0]);
        assert_eq!(seen.len(), requests, "{fault:?}: {seen:?}");
        assert!(seen.iter().all(|s| s.fault == Some(fault)), "{seen:?}");
        assert_eq!(disk(&host), before, "{fault:?} changed something on disk");
    }
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(host.current(), "releases/2.0.0");
}

/// One scripted fault: applied to the next `requests` requests `when` matches (the SDK's
/// attempts of one call), so that it spoils exactly one cycle of the agent.
struct Step {
    when: Match,
    fault: Fault,
    requests: usize,
    /// What the `poll_failed` line says besides the key.
    says: &'static str,
    /// "Not there yet": the agent polls again at the normal pace instead of backing off.
    waiting: bool,
}

fn step(suffix: &str, fault: Fault, requests: usize, says: &'static str) -> Step {
    Step {
        when: Match::s3_get(suffix),
        fault,
        requests,
        says,
        waiting: fault == Fault::NotFound,
    }
}

/// The S3 faults of `steps`, one cycle each, against a running agent; then the object is served
/// again and the agent deploys 2.0.0. Checks every cycle's event, request count and pause.
fn run_s3_script(label: &str, suffix: &str, steps: &[Step]) {
    let proxy = FaultProxy::in_front_of_moto();
    let host = host_with_an_upgrade_waiting(&proxy, label);
    let before = disk(&host);
    let skip = proxy.seen().len();
    for s in steps {
        proxy.inject(s.when.clone(), s.fault, s.requests as u32);
    }
    // Once the script is done: "not there yet" until the test has looked at the disk.
    proxy.inject_always(Match::s3_get(suffix), Fault::NotFound);
    let mut daemon = Daemon::start(&host);

    let failed = daemon.wait_for_events("poll_failed", steps.len() + 1, Duration::from_secs(60));
    daemon.assert_running();
    assert_eq!(disk(&host), before, "a fault changed something on disk");
    let cycles = cycles(&proxy.seen()[skip..]);
    print_cycles(label, &cycles);

    let key = format!("releases/2.0.0{suffix}");
    let pauses = pauses(&cycles);
    let mut failures = 0;
    let mut fractions = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let line = &failed[i];
        assert!(
            line.contains(&format!("{key}:"))
                || line.contains(&format!("{key} "))
                || line.ends_with(&key),
            "cycle {i} ({:?}) does not name {key}: {line}",
            s.fault
        );
        assert!(line.contains(s.says), "cycle {i} ({:?}): {line}", s.fault);
        assert_readable(line);
        let spoiled: Vec<_> = cycles[i].iter().filter(|r| s.when.matches(r)).collect();
        assert_eq!(spoiled.len(), s.requests, "cycle {i}: {:?}", cycles[i]);
        assert!(
            spoiled.iter().all(|r| r.fault == Some(s.fault)),
            "{spoiled:?}"
        );

        failures = if s.waiting { 0 } else { failures + 1 };
        let base = backoff_base(failures);
        let floor = if s.waiting { POLL } else { Duration::ZERO };
        eprintln!(
            "cycle {i:>2} {:<40} {} request(s) to {suffix}; pause {:>5} ms (window {}..{} ms)",
            format!("{:?}", s.fault),
            spoiled.len(),
            ms(pauses[i]),
            ms(floor),
            ms(if s.waiting { POLL + POLL / 10 } else { base })
        );
        assert!(
            pauses[i] >= floor,
            "cycle {i} ({:?}): next poll after {:?}, before {floor:?}",
            s.fault,
            pauses[i]
        );
        // A pause counts from the start of the cycle's last request, which a slow body holds
        // open for the download timeout.
        let held = match s.fault {
            Fault::Slow(_) => DOWNLOAD_TIMEOUT,
            _ => Duration::ZERO,
        };
        assert!(
            pauses[i] <= base + held + SLACK,
            "cycle {i} ({:?}): next poll after {:?}, beyond the window of {base:?}",
            s.fault,
            pauses[i]
        );
        if !s.waiting {
            fractions.push(jitter(pauses[i], base));
        }
    }
    assert!(
        fractions.iter().any(|f| (f - fractions[0]).abs() > 0.02),
        "no jitter: {fractions:?}"
    );

    proxy.clear();
    daemon.wait_for_events("deployed", 1, Duration::from_secs(20));
    assert_eq!(host.current(), "releases/2.0.0");
    let (releases, staging) = host.release_dirs();
    assert_eq!(releases, ["1.0.0", "2.0.0"]);
    assert!(staging.is_empty(), "{staging:?}");
    daemon.stop();
}

#[test]
fn tarball_faults_are_retried_on_later_cycles_and_change_nothing() {
    let t = ".tar.gz";
    run_s3_script(
        "tarball",
        t,
        &[
            step(t, Fault::Status(500), 3, "InternalError"),
            step(t, Fault::Status(503), 3, "ServiceUnavailable"),
            step(t, Fault::NotFound, 1, "not found"),
            step(t, Fault::Denied, 1, "access denied: s3:GetObject on s3://"),
            step(t, Fault::ResetMidBody, 1, "Connection reset by peer"),
            step(
                t,
                Fault::Truncate,
                1,
                "end of file before message length reached",
            ),
            step(t, SLOW, 1, "download did not finish within 4 s"),
            step(t, FLIP, 1, "checksum mismatch"),
        ],
    );
}

#[test]
fn digest_file_faults_are_retried_on_later_cycles_and_change_nothing() {
    let d = ".tar.gz.sha256";
    run_s3_script(
        "digest",
        d,
        &[
            step(d, Fault::Throttle, 3, "throttled: SlowDown"),
            step(d, Fault::NotFound, 1, "not found"),
            step(d, Fault::Denied, 1, "access denied: s3:GetObject on s3://"),
            step(d, Fault::ResetMidBody, 1, "Connection reset by peer"),
            step(
                d,
                Fault::Truncate,
                1,
                "end of file before message length reached",
            ),
            step(d, SLOW, 1, "download did not finish within 4 s"),
            step(d, FLIP, 1, "checksum mismatch"),
        ],
    );
}

/// A byte flipped where no transport checksum can catch it (the object carries none) reaches
/// the digest check: the artifact is rejected and the request remembered as failed, so it is not
/// fetched again until an operator puts the parameter again.
#[test]
fn a_flipped_byte_without_a_transport_checksum_is_rejected_until_promoted_again() {
    let proxy = FaultProxy::in_front_of_moto();
    let host = host_with_an_upgrade_waiting(&proxy, "flip");
    let before = disk(&host);
    let tarball = Match::s3_get(".tar.gz");
    proxy.inject(
        tarball.clone(),
        Fault::FlipByte {
            strip_checksums: true,
        },
        1,
    );
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let rejected = events(&stderr(&out), "artifact_rejected");
    assert_eq!(rejected.len(), 1, "{}", stderr(&out));
    assert!(
        rejected[0].contains("releases/2.0.0.tar.gz: sha256 mismatch"),
        "{}",
        rejected[0]
    );
    assert_eq!(host.current(), before.current);
    assert_eq!(host.release_dirs(), (before.releases.clone(), vec![]));
    let status = host.status();
    assert_eq!(status["last"]["result"], "rejected");
    assert_eq!(status["failed"][0]["value"], "2.0.0");

    // Not fetched again: the request failed.
    let fetches = proxy.calls(&tarball).len();
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(events(&stderr(&out), "skipped_failed_version").len(), 1);
    assert_eq!(proxy.calls(&tarball).len(), fetches);

    // The operator puts the version again: a new request, fetched whole this time.
    host.world.promote("2.0.0");
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(host.current(), "releases/2.0.0");
    assert_eq!(proxy.calls(&tarball).len(), fetches + 1);
}
