//! Zero-downtime restarts (issue #7), measured through the real parts: an instance whose sample
//! app is socket-activated with the example units in `systemd/`, and one with the plain unit,
//! each taken through 20 consecutive deploys while clients on the host keep asking the app for its
//! version on loopback. With socket activation no request may fail; the plain restart's failures
//! are only printed, for comparison (`--nocapture`), and written down in docs/ZERO-DOWNTIME.md.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use drover_tests::{http, World};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Error, ErrorKind};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Deploys under load, after the first one: versions 2 to `DEPLOYS + 1`.
const DEPLOYS: u32 = 20;
/// Clients asking at the same time, each one request after the other.
const CLIENTS: usize = 4;
/// Each client's pause between two requests, so that the load leaves the 2 cores some room.
const PAUSE: Duration = Duration::from_millis(5);
/// How long a request may take to connect, and to get each part of its answer: short, so that a
/// request left hanging counts as failed, yet far above the wait a restart causes (about 0.3 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one deploy may take.
const DEPLOY: Duration = Duration::from_secs(60);
/// The least time between two promotes: each deploy runs under load for a while, as it would on
/// an instance (drover's restarts are not held back by systemd's start limit; see e2e.rs).
const SPACING: Duration = Duration::from_millis(2500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `systemd/app.socket` + `systemd/app.service`: systemd holds the listening socket.
    SocketActivated,
    /// The harness's plain `app.service`: the app binds its port itself.
    Plain,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::SocketActivated => "socket activation",
            Mode::Plain => "plain restart",
        }
    }

    /// What the sample app says in its journal about where its socket came from.
    fn origin(self) -> &'static str {
        match self {
            Mode::SocketActivated => "(socket from systemd)",
            Mode::Plain => "(bound here)",
        }
    }
}

/// What the clients saw during one run of deploys.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    failures: u64,
    /// Failures by kind of error.
    errors: BTreeMap<String, u64>,
    /// Answers by the version that gave them.
    answers: BTreeMap<u32, u64>,
    /// For each version being deployed while requests failed: from the start of the first of
    /// them to the end of the last.
    failed_during: BTreeMap<u32, (Instant, Instant)>,
    /// Answers from an older version after the same client had been answered by a newer one.
    older_after_newer: u64,
    slowest_answer: Duration,
}

impl Tally {
    fn merge(mut self, other: Tally) -> Tally {
        self.requests += other.requests;
        self.failures += other.failures;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        for (version, n) in other.answers {
            *self.answers.entry(version).or_default() += n;
        }
        for (version, window) in other.failed_during {
            self.note_failure(version, window);
        }
        self.older_after_newer += other.older_after_newer;
        self.slowest_answer = self.slowest_answer.max(other.slowest_answer);
        self
    }

    fn note_failure(&mut self, version: u32, (start, end): (Instant, Instant)) {
        let window = self.failed_during.entry(version).or_insert((start, end));
        *window = (window.0.min(start), window.1.max(end));
    }

    fn summary(&self, mode: Mode, took: Duration) -> String {
        let longest = self
            .failed_during
            .values()
            .map(|(start, end)| *end - *start)
            .max();
        format!(
            "{}: {DEPLOYS} deploys in {took:.1?}, {CLIENTS} clients: {} requests, {} failed ({:.3} %), \
             in {} of {DEPLOYS} deploys, over at most {:.0?} of one; slowest answer {:.0?}; errors {:?}",
            mode.name(),
            self.requests,
            self.failures,
            100.0 * self.failures as f64 / self.requests.max(1) as f64,
            self.failed_during.len(),
            longest.unwrap_or_default(),
            self.slowest_answer,
            self.errors,
        )
    }
}

/// Sets the flag when dropped, also when the deploys panic: the clients stop, and the scope that
/// waits for them ends.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The version the app answered `GET /version` with.
fn version_of(answer: http::Response) -> std::io::Result<u32> {
    let text = answer.text();
    match (answer.status, text.trim().parse()) {
        (200, Ok(version)) => Ok(version),
        (status, _) => Err(Error::new(
            ErrorKind::InvalidData,
            format!("HTTP {status}: {text:?}"),
        )),
    }
}

/// Stops the clients and sums up what they saw.
fn tally_of(stop: &AtomicBool, clients: Vec<std::thread::ScopedJoinHandle<'_, Tally>>) -> Tally {
    stop.store(true, Ordering::Relaxed);
    clients
        .into_iter()
        .map(|c| c.join().expect("a client panicked"))
        .fold(Tally::default(), Tally::merge)
}

/// One client: `GET /version`, again and again, until `stop`.
fn client(port: u16, stop: &AtomicBool, deploying: &AtomicU32) -> Tally {
    let mut tally = Tally::default();
    let mut newest = 0;
    while !stop.load(Ordering::Relaxed) {
        let during = deploying.load(Ordering::Relaxed);
        let started = Instant::now();
        tally.requests += 1;
        match http::get_within(port, "/version", REQUEST_TIMEOUT).and_then(version_of) {
            Ok(version) => {
                *tally.answers.entry(version).or_default() += 1;
                if version < newest {
                    tally.older_after_newer += 1;
                }
                newest = newest.max(version);
                tally.slowest_answer = tally.slowest_answer.max(started.elapsed());
            }
            Err(e) => {
                tally.failures += 1;
                let kind = match e.kind() {
                    ErrorKind::InvalidData => e.to_string(),
                    kind => format!("{kind:?}"),
                };
                *tally.errors.entry(kind).or_default() += 1;
                tally.note_failure(during, (started, Instant::now()));
            }
        }
        std::thread::sleep(PAUSE);
    }
    tally
}

/// Boots an instance with the app's units as `mode` says, deploys version 1, then deploys
/// versions 2 to 21 one after the other under load, each once the one before is served.
fn deploys_under_load(mode: Mode) -> (Tally, Duration) {
    let world = World::new(&format!("zero-{mode:?}"));
    let spec = match mode {
        Mode::SocketActivated => world.boot_spec().with_app_units(world.app_socket_units()),
        Mode::Plain => world.boot_spec(),
    };
    let instance = world.boot(spec);
    let mut promoted = Instant::now();
    world.release("1", true);
    instance.wait_for_events("deployed", 1, DEPLOY);
    assert_eq!(instance.served(), "1");

    let stop = AtomicBool::new(false);
    let deploying = AtomicU32::new(1);
    let started = Instant::now();
    let tally = std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| scope.spawn(|| client(world.app_port, &stop, &deploying)))
            .collect();
        for version in 2..=DEPLOYS + 1 {
            std::thread::sleep(SPACING.saturating_sub(promoted.elapsed()));
            deploying.store(version, Ordering::Relaxed);
            promoted = Instant::now();
            world.release(&version.to_string(), true);
            let deployed = instance.wait_for_events("deployed", version as usize, DEPLOY);
            let last = &deployed[version as usize - 1];
            assert_eq!(last["VERSION"], Value::from(version.to_string()), "{last}");
            assert_eq!(instance.version_served(), Some(version.to_string()));
        }
        tally_of(&stop, clients)
    });
    let took = started.elapsed();

    // Each of the 21 app processes took its socket as this mode says.
    let app_journal = instance.container.journal_text("app.service");
    let starts = app_journal.matches(mode.origin()).count();
    assert_eq!(starts, DEPLOYS as usize + 1, "{app_journal}");
    assert!(instance.journal_events("reverted").is_empty());
    (tally, took)
}

#[test]
fn socket_activation_fails_no_request_during_20_deploys_under_load() {
    // Both at once, on two instances: the same machine load for both, and half the wall time.
    let (socket, plain) = std::thread::scope(|scope| {
        let socket = scope.spawn(|| deploys_under_load(Mode::SocketActivated));
        let plain = scope.spawn(|| deploys_under_load(Mode::Plain));
        (socket.join(), plain.join())
    });
    let (socket, socket_took) = socket.unwrap_or_else(|e| std::panic::resume_unwind(e));
    let (plain, plain_took) = plain.unwrap_or_else(|e| std::panic::resume_unwind(e));
    eprintln!("{}", socket.summary(Mode::SocketActivated, socket_took));
    eprintln!("{}", plain.summary(Mode::Plain, plain_took));

    assert_eq!(
        (socket.failures, &socket.errors),
        (0, &BTreeMap::new()),
        "requests failed with socket activation, while deploying versions {:?}",
        socket.failed_during.keys()
    );
    // The load ran across every deploy, and no client was answered by a release after its
    // successor: the old process is gone before the new one accepts.
    let versions: Vec<u32> = socket.answers.keys().copied().collect();
    assert_eq!(versions, (1..=DEPLOYS + 1).collect::<Vec<_>>());
    assert_eq!(socket.older_after_newer, 0);
    // The plain restart is measured, not judged: it only has to have run.
    assert!(plain.requests > 0);
}

/// Load-balancer settings for the draining runs: AWS's least thresholds, a 1 s check (AWS's
/// least is 5 s) and a 2 s drain, so that 20 deploys take minutes, not hours.
fn balancer_settings() -> drover_tests::elb::Settings {
    drover_tests::elb::Settings {
        interval: Duration::from_secs(1),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
        drain: Duration::from_secs(2),
        health_path: "/health".into(),
    }
}

/// What one run of deploys behind the load balancer showed.
struct Behind {
    tally: Tally,
    took: Duration,
    /// Per instance and deploy: `drained` plus `registered`, the time draining added.
    added: Vec<Duration>,
}

/// Two instances with the plain unit behind the harness's load balancer, `[fleet]
/// max_in_flight = 1`, and `[loadbalancer]` only when `draining`: version 1, then versions 2 to
/// 21 under load, the clients asking the load balancer's listener.
fn deploys_behind_a_load_balancer(draining: bool) -> Behind {
    use drover_tests::elb::{create_target_group, Elb};
    use drover_tests::faultproxy::FaultProxy;
    use drover_tests::imds::Imds;

    let label = if draining {
        "zero-lb-drain"
    } else {
        "zero-lb-none"
    };
    let world = World::new(label);
    let elb = Elb::start(balancer_settings());
    let proxy = FaultProxy::with_front(elb.front());
    let group = create_target_group(&world.name, Duration::from_secs(30));
    let listener = elb.listen(&group);
    let prefix = "[fleet]\nstatus_prefix = \"fleet/\"\nmax_in_flight = 1\n";
    let members: Vec<(drover_tests::Instance, Imds)> = (0..2u64)
        .map(|n| {
            let imds = Imds::start(&format!(
                "i-{:017x}",
                0x0d0_0000 + n + 16 * u64::from(draining)
            ));
            let port = drover_tests::free_port();
            let lb = match draining {
                true => format!("[loadbalancer]\ntarget_groups = [\"{group}\"]\nport = {port}\n\n"),
                false => String::new(),
            };
            let spec = world.member_spec(
                port,
                &imds.endpoint(),
                &proxy.endpoint(),
                &format!("{lb}{prefix}"),
            );
            elb.preregister(&group, imds.instance_id(), port);
            let mut instance = world.boot(spec);
            instance.app_port = port;
            (instance, imds)
        })
        .collect();
    let mut promoted = Instant::now();
    world.release("1", true);
    for (instance, _) in &members {
        instance.wait_for_events("deployed", 1, DEPLOY);
    }
    drover_tests::wait_for(DEPLOY, "both instances in service", || {
        (elb.serving(&group).len() == 2).then_some(())
    });

    let stop = AtomicBool::new(false);
    let deploying = AtomicU32::new(1);
    let started = Instant::now();
    let tally = std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| scope.spawn(|| client(listener, &stop, &deploying)))
            .collect();
        for version in 2..=DEPLOYS + 1 {
            std::thread::sleep(SPACING.saturating_sub(promoted.elapsed()));
            deploying.store(version, Ordering::Relaxed);
            promoted = Instant::now();
            world.release(&version.to_string(), true);
            for (instance, _) in &members {
                let deployed = instance.wait_for_events("deployed", version as usize, DEPLOY);
                let last = &deployed[version as usize - 1];
                assert_eq!(last["VERSION"], Value::from(version.to_string()), "{last}");
            }
            // Both back in the listener's rotation before the next deploy.
            drover_tests::wait_for(DEPLOY, "both instances in service", || {
                (elb.serving(&group).len() == 2).then_some(())
            });
        }
        tally_of(&stop, clients)
    });
    let took = started.elapsed();
    let ms = |e: &Value| {
        Duration::from_millis(
            e["DURATION_MS"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
        )
    };
    let mut added = Vec::new();
    for (instance, _) in &members {
        assert!(instance.journal_events("reverted").is_empty());
        let drained = instance.journal_events("drained");
        let registered = instance.journal_events("registered");
        // The first deploy (before the load) left out.
        for (d, r) in drained.iter().zip(&registered).skip(1) {
            added.push(ms(d) + ms(r));
        }
    }
    Behind { tally, took, added }
}

#[test]
fn behind_a_load_balancer_draining_fails_no_request_during_20_deploys_of_a_plain_app() {
    let (with, without) = std::thread::scope(|scope| {
        let with = scope.spawn(|| deploys_behind_a_load_balancer(true));
        let without = scope.spawn(|| deploys_behind_a_load_balancer(false));
        (with.join(), without.join())
    });
    let with = with.unwrap_or_else(|e| std::panic::resume_unwind(e));
    let without = without.unwrap_or_else(|e| std::panic::resume_unwind(e));
    let settings = balancer_settings();
    let mut added = with.added.clone();
    added.sort();
    eprintln!(
        "behind a load balancer, with draining: {}",
        with.tally.summary(Mode::Plain, with.took)
    );
    eprintln!(
        "behind a load balancer, without: {}",
        without.tally.summary(Mode::Plain, without.took)
    );
    eprintln!(
        "time draining added per instance and deploy ({} of them): median {:.2?}, most {:.2?}; \
         drain {:?} + 2 health-check intervals {:?}",
        added.len(),
        added.get(added.len() / 2).copied().unwrap_or_default(),
        added.last().copied().unwrap_or_default(),
        settings.drain,
        settings.interval * 2,
    );
    assert_eq!(
        (with.tally.failures, &with.tally.errors),
        (0, &BTreeMap::new()),
        "requests failed with draining, while deploying versions {:?}",
        with.tally.failed_during.keys()
    );
    assert_eq!(
        added.len(),
        2 * DEPLOYS as usize,
        "each instance drained for each deploy"
    );
    // Without draining the load balancer is measured, not judged: it only has to have run.
    assert!(without.tally.requests > 0);
}
