//! A fleet against an SSM budget: many `drover run` daemons, one host process each with its own
//! release root and state, poll one parameter through the fault proxy, which lets `GetParameter`
//! through at so many a second (a token bucket with a burst of one second's worth, the way AWS
//! meters an API) and answers the rest with `ThrottlingException`. The fleet runs 1.0.0; the
//! daemons start together, run a while, then 2.0.0 is promoted. The test measures what the proxy
//! saw (success rate, accepted and offered requests per second) and how long the fleet took to
//! run 2.0.0, once with a fleet whose plain demand is three times the budget and once within it.
//! With `--nocapture` it prints the figures for the docs and the per-second series.
//!
//! Every agent signs with an access key of its own (moto takes any), so the proxy can tell the
//! agents apart. The agents poll every 250 ms, so that the slowest of them arrives within a
//! minute or so. What carries over to a real fleet is the shape in polls, for the same ratio of
//! demand to budget: with the default poll of 30 s every time is 120 times longer.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::faultproxy::{FaultProxy, Match, Seen};
use drover_tests::host::{config_toml, drover_command, stderr};
use drover_tests::World;

const POLL: Duration = Duration::from_millis(250);
const AGENTS: usize = 48;
/// A third of the fleet's plain demand (48 agents, 4 polls a second each).
const TIGHT_BUDGET: u32 = 64;
/// One and a half times the plain demand.
const AMPLE_BUDGET: u32 = 288;
/// How long the fleet runs on 1.0.0 before the promote: 40 polls, long enough for the backoff
/// after the start's burst to settle.
const SETTLE: Duration = Duration::from_secs(10);
/// The steady state the test compares with the first seconds: the end of [`SETTLE`].
const STEADY: Duration = Duration::from_secs(5);
/// The longest the fleet may take to run 2.0.0, 400 polls. Full jitter has no bound: the
/// slowest agent of a fleet three times over its budget took 16 to 42 polls in our runs (40 to
/// 100 when the throttling was forgotten at the first accepted poll), and each further try, a
/// window of up to 32 polls later, fails about three times in ten.
const CONVERGE_WITHIN: Duration = Duration::from_secs(100);

/// One agent of the fleet: its directory holds its config, release root (`app/`), state
/// (`state/`) and the daemon's log.
struct Agent {
    dir: PathBuf,
    /// The access key it signs with, which names it in the proxy's record.
    key: String,
    daemon: Option<Child>,
}

impl Agent {
    fn config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = drover_command(&self.config(), args);
        cmd.env("AWS_ACCESS_KEY_ID", &self.key);
        cmd
    }

    /// The requests of `seen` that this agent signed.
    fn signed<'a>(&'a self, seen: &'a [Seen]) -> impl Iterator<Item = &'a Seen> + 'a {
        seen.iter()
            .filter(|s| s.client.as_deref() == Some(self.key.as_str()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Where `current` points (`releases/1.0.0`), or "" when there is no release yet.
    fn current(&self) -> String {
        std::fs::read_link(self.dir.join("app/current"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    fn start(&mut self) {
        let log = File::create(self.dir.join("daemon.log")).unwrap();
        let child = self
            .command(&["run"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
    }

    /// SIGTERM; the agent must stop cleanly (exit 0).
    fn stop(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        assert!(
            child.try_wait().unwrap().is_none(),
            "{} exited early. Log:\n{}",
            self.key,
            self.log()
        );
        Command::new("kill")
            .args(["-s", "TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{}. Log:\n{}", self.key, self.log());
    }
}

/// Everything on an agent's disk that a poll could change: `current`, the names in `releases/`
/// and `.staging/`, and the bytes of every file in the state directory.
#[derive(Debug, PartialEq)]
struct Disk {
    current: String,
    releases: Vec<String>,
    staging: Vec<String>,
    state: BTreeMap<String, Vec<u8>>,
}

fn disk(agent: &Agent) -> Disk {
    let state_dir = agent.dir.join("state");
    Disk {
        current: agent.current(),
        releases: drover_tests::sorted_names(&agent.dir.join("app/releases")),
        staging: drover_tests::sorted_names(&agent.dir.join("app/.staging")),
        state: drover_tests::sorted_names(&state_dir)
            .into_iter()
            .map(|n| {
                let bytes = std::fs::read(state_dir.join(&n)).unwrap_or_default();
                (n, bytes)
            })
            .collect(),
    }
}

/// The agents of one world, all behind one proxy; the daemons are killed if the test fails.
struct Fleet {
    world: World,
    agents: Vec<Agent>,
}

impl Fleet {
    /// `count` agents running 1.0.0: the first deploys it through `proxy`, the others start
    /// from a copy of its disk, like instances launched from one image.
    fn running_1_0_0(world: World, proxy: &FaultProxy, count: usize) -> Fleet {
        world.release("1.0.0", true);
        let poll = format!("{}ms", POLL.as_millis());
        let agents: Vec<Agent> = (0..count)
            .map(|i| {
                let dir = world.dir().join(format!("agent-{i:02}"));
                std::fs::create_dir_all(&dir).unwrap();
                let text = config_toml(&world, &proxy.endpoint(), &dir, &poll, "", "");
                std::fs::write(dir.join("agent.toml"), text).unwrap();
                Agent {
                    dir,
                    key: format!("AKIAFLEET{i:03}"),
                    daemon: None,
                }
            })
            .collect();
        let out = agents[0].command(&["once"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        for agent in &agents[1..] {
            let copy = Command::new("cp")
                .arg("-a")
                .arg(agents[0].dir.join("app"))
                .arg(agents[0].dir.join("state"))
                .arg(&agent.dir)
                .status()
                .unwrap();
            assert!(copy.success());
        }
        for agent in &agents {
            assert_eq!(agent.current(), "releases/1.0.0");
        }
        Fleet { world, agents }
    }

    fn disks(&self) -> Vec<Disk> {
        self.agents.iter().map(disk).collect()
    }

    /// The index of the agent that signs with `key`.
    fn agent_of(&self, key: Option<&str>) -> Option<usize> {
        self.agents.iter().position(|a| Some(a.key.as_str()) == key)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            if let Some(mut child) = agent.daemon.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The `GetParameter` requests one second of the run saw.
#[derive(Clone, Copy, Debug, Default)]
struct Second {
    accepted: usize,
    throttled: usize,
}

impl Second {
    fn offered(&self) -> usize {
        self.accepted + self.throttled
    }
}

/// `polls`, counted in whole seconds since `start`.
fn per_second(polls: &[Seen], start: Instant) -> Vec<Second> {
    let mut seconds: Vec<Second> = Vec::new();
    for s in polls {
        let i = s.at.saturating_duration_since(start).as_secs() as usize;
        if seconds.len() <= i {
            seconds.resize(i + 1, Second::default());
        }
        match s.fault {
            None => seconds[i].accepted += 1,
            Some(_) => seconds[i].throttled += 1,
        }
    }
    seconds
}

/// The requests of `polls` per second between `from` and `to`.
fn rate(polls: &[Seen], from: Instant, to: Instant) -> f64 {
    let n = polls.iter().filter(|s| s.at >= from && s.at < to).count();
    n as f64 / to.duration_since(from).as_secs_f64()
}

fn percent(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

/// `(part, whole)` as a percentage, or "-" when there is no whole.
fn share((part, whole): (usize, usize)) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1} %", percent(part, whole))
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The token bucket's promise: from any accepted request to any later one, no more than
/// `budget × (1 + seconds between them)` got through.
fn assert_within_budget(polls: &[Seen], budget: u32) {
    let accepted: Vec<Instant> = polls
        .iter()
        .filter(|s| s.fault.is_none())
        .map(|s| s.at)
        .collect();
    let budget = f64::from(budget);
    for (i, first) in accepted.iter().enumerate() {
        for (n, last) in accepted[i..].iter().enumerate() {
            let span = last.duration_since(*first).as_secs_f64();
            assert!(
                (n + 1) as f64 <= budget * (1.0 + span) + 1e-6,
                "{} requests accepted within {span:.3} s, over a budget of {budget}/s",
                n + 1
            );
        }
    }
}

/// One run's parameters.
struct Case {
    label: &'static str,
    agents: usize,
    budget: u32,
}

/// One of the last agents to run 2.0.0, and how it got there.
struct Laggard {
    key: String,
    converged: Duration,
    /// Its polls from the promote to its deploy: (time since the promote, accepted).
    polls: Vec<(Duration, bool)>,
}

/// What one run measured.
struct Figures {
    seconds: Vec<Second>,
    /// Since the daemons started.
    promoted_at: Duration,
    /// Per agent, from the promote to `current` naming 2.0.0.
    converged: Vec<Duration>,
    /// The most `GetParameter` calls offered in one of the first three seconds, and the rate
    /// offered at the end of [`SETTLE`].
    first_peak: usize,
    steady_rate: f64,
    /// Of the polls that follow an accepted poll of the same agent, and of those that follow a
    /// throttled one: (accepted, all).
    after_accepted: (usize, usize),
    after_throttled: (usize, usize),
    /// The agents' longest run of throttled polls, and their longest pause between two polls.
    longest_streak: usize,
    longest_pause: Duration,
    /// The slowest agents, slowest first.
    slowest: Vec<Laggard>,
}

impl Figures {
    fn total(&self) -> (usize, usize) {
        let accepted = self.seconds.iter().map(|s| s.accepted).sum();
        let offered = self.seconds.iter().map(Second::offered).sum();
        (accepted, offered)
    }

    fn converged_at(&self, fraction: f64) -> Duration {
        let mut sorted = self.converged.clone();
        sorted.sort();
        let i = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
        sorted[i - 1]
    }

    fn print(&self, case: &Case) {
        let plain = case.agents as f64 / POLL.as_secs_f64();
        eprintln!(
            "--- {}: {} agents polling every {} ms (plain demand {plain:.0}/s), GetParameter \
             budget {}/s (token bucket, burst {})",
            case.label,
            case.agents,
            POLL.as_millis(),
            case.budget,
            case.budget
        );
        eprintln!("   s  offered  accepted  throttled");
        let promoted = self.promoted_at.as_secs() as usize;
        for (i, s) in self.seconds.iter().enumerate() {
            eprintln!(
                "{i:>4}  {:>7}  {:>8}  {:>9}{}",
                s.offered(),
                s.accepted,
                s.throttled,
                if i == promoted {
                    format!("   <- 2.0.0 promoted at {}", secs(self.promoted_at))
                } else {
                    String::new()
                }
            );
        }
        let (accepted, offered) = self.total();
        let peak_accepted = self.seconds.iter().map(|s| s.accepted).max().unwrap_or(0);
        let peak_offered = self.seconds.iter().map(Second::offered).max().unwrap_or(0);
        eprintln!(
            "success rate {:.1} % ({accepted} of {offered} GetParameter calls)\n\
             peak TPS: accepted {peak_accepted}, offered {peak_offered}; offered at most {}/s in \
             the first 3 s, {:.1}/s in the last {} s before the promote\n\
             accepted: {} of the polls after an accepted poll, {} of those after a throttled \
             one\n\
             promote to fleet on 2.0.0: {} (half the fleet {}, 90 % {})\n\
             longest run of throttled polls of one agent {}, longest pause between its polls {}",
            percent(accepted, offered),
            self.first_peak,
            self.steady_rate,
            STEADY.as_secs(),
            share(self.after_accepted),
            share(self.after_throttled),
            secs(self.converged_at(1.0)),
            secs(self.converged_at(0.5)),
            secs(self.converged_at(0.9)),
            self.longest_streak,
            secs(self.longest_pause),
        );
        for laggard in &self.slowest {
            let polls: Vec<String> = laggard
                .polls
                .iter()
                .map(|(at, ok)| format!("{:.1}{}", at.as_secs_f64(), if *ok { "" } else { "T" }))
                .collect();
            eprintln!(
                "{}: on 2.0.0 after {}; its polls (s after the promote, T: throttled): {}",
                laggard.key,
                secs(laggard.converged),
                polls.join(" ")
            );
        }
        eprintln!(
            "| agents | poll | budget | success | peak accepted/s | peak offered/s | \
             half the fleet on 2.0.0 | all of it |\n\
             | {} | {} ms | {}/s | {:.1} % | {peak_accepted} | {peak_offered} | {} | {} |",
            case.agents,
            POLL.as_millis(),
            case.budget,
            percent(accepted, offered),
            secs(self.converged_at(0.5)),
            secs(self.converged_at(1.0)),
        );
    }
}

/// Runs `case`: the fleet on 1.0.0 starts, runs for [`SETTLE`] with nothing changing on disk,
/// 2.0.0 is promoted and every agent must deploy it; checks the agents' polls as the proxy saw
/// them, and returns the figures.
fn run(case: &Case) -> Figures {
    // The fleet shares the machine's two cores with moto: it runs alone, or the timings would be
    // another test's too (the other fleet's, a container's).
    let _alone = drover_tests::alone();
    let proxy = FaultProxy::in_front_of_moto();
    let mut fleet = Fleet::running_1_0_0(World::new(case.label), &proxy, case.agents);
    fleet
        .world
        .publish("2.0.0", &fleet.world.app_tarball("2.0.0", true));
    let get = Match::ssm("GetParameter");
    proxy.budget(get.clone(), case.budget);
    let before = fleet.disks();

    let start = Instant::now();
    for agent in &mut fleet.agents {
        agent.start();
    }
    std::thread::sleep(SETTLE);
    assert_eq!(
        fleet.disks(),
        before,
        "polling at 1.0.0, throttled or not, changed something on disk"
    );

    let promoted = Instant::now();
    fleet
        .world
        .moto
        .put_parameter(&fleet.world.parameter, "2.0.0");
    let mut converged: Vec<Option<Duration>> = vec![None; case.agents];
    drover_tests::wait_for(CONVERGE_WITHIN, "the fleet to run 2.0.0", || {
        for (agent, done) in fleet.agents.iter().zip(converged.iter_mut()) {
            if done.is_none() && agent.current() == "releases/2.0.0" {
                *done = Some(promoted.elapsed());
            }
        }
        converged.iter().all(Option::is_some).then_some(())
    });
    for agent in &mut fleet.agents {
        agent.stop();
    }
    for d in fleet.disks() {
        assert_eq!(d.releases, ["1.0.0", "2.0.0"]);
        assert!(d.staging.is_empty(), "{:?}", d.staging);
    }

    let seen: Vec<Seen> = proxy.seen().into_iter().filter(|s| s.at >= start).collect();
    let polls: Vec<Seen> = seen.iter().filter(|s| get.matches(s)).cloned().collect();
    let converged: Vec<Duration> = converged.into_iter().flatten().collect();
    let figures = measure(&fleet, &polls, start, promoted, converged);
    figures.print(case);

    let tarball = Match::s3_get("2.0.0.tar.gz");
    for agent in &fleet.agents {
        let fetches = agent.signed(&seen).filter(|s| tarball.matches(s)).count();
        assert_eq!(fetches, 1, "{} fetched 2.0.0 {fetches} times", agent.key);
    }
    check_polls(&fleet, &polls);
    check_reported(&fleet, &polls);
    check_pauses(&fleet, &polls);
    assert_within_budget(&polls, case.budget);
    figures
}

/// The figures of a run from its `polls`, the daemons' `start`, the instant 2.0.0 was
/// `promoted` and each agent's time from then to running it.
fn measure(
    fleet: &Fleet,
    polls: &[Seen],
    start: Instant,
    promoted: Instant,
    converged: Vec<Duration>,
) -> Figures {
    let seconds = per_second(polls, start);
    let first_peak = seconds
        .iter()
        .take(3)
        .map(Second::offered)
        .max()
        .unwrap_or(0);
    let mut longest_streak = 0;
    let mut longest_pause = Duration::ZERO;
    let mut after_accepted = (0, 0);
    let mut after_throttled = (0, 0);
    for agent in &fleet.agents {
        let mine: Vec<&Seen> = agent.signed(polls).collect();
        let mut streak = usize::from(mine.first().is_some_and(|s| s.fault.is_some()));
        for pair in mine.windows(2) {
            let (before, now) = (pair[0], pair[1]);
            let tally = match before.fault {
                None => &mut after_accepted,
                Some(_) => &mut after_throttled,
            };
            tally.0 += usize::from(now.fault.is_none());
            tally.1 += 1;
            streak = if now.fault.is_some() { streak + 1 } else { 0 };
            longest_streak = longest_streak.max(streak);
            longest_pause = longest_pause.max(now.at.duration_since(before.at));
        }
    }
    let mut order: Vec<usize> = (0..fleet.agents.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(converged[i]));
    let slowest = order
        .iter()
        .take(3)
        .map(|&i| Laggard {
            key: fleet.agents[i].key.clone(),
            converged: converged[i],
            polls: fleet.agents[i]
                .signed(polls)
                .filter(|s| s.at >= promoted && s.at <= promoted + converged[i])
                .map(|s| (s.at.duration_since(promoted), s.fault.is_none()))
                .collect(),
        })
        .collect();
    Figures {
        seconds,
        promoted_at: promoted.duration_since(start),
        converged,
        first_peak,
        steady_rate: rate(polls, promoted - STEADY, promoted),
        after_accepted,
        after_throttled,
        longest_streak,
        longest_pause,
        slowest,
    }
}

/// One `GetParameter` per poll: every request is the first and only attempt of its call, and
/// comes from an agent of the fleet.
fn check_polls(fleet: &Fleet, polls: &[Seen]) {
    let mut invocations = HashSet::new();
    for s in polls {
        assert_eq!(s.attempt, Some(1), "the SDK retried a poll: {s:?}");
        let id = s.invocation.clone().expect("an invocation id");
        assert!(invocations.insert(id), "two requests of one call: {s:?}");
        assert!(
            fleet.agent_of(s.client.as_deref()).is_some(),
            "not from the fleet: {s:?}"
        );
    }
}

/// Every throttled poll, and nothing else, is reported: one `poll_failed` event that names the
/// throttling, per throttled request the proxy saw from that agent. The agent's last request
/// may have been answered after it was told to stop, and go unreported.
fn check_reported(fleet: &Fleet, polls: &[Seen]) {
    for agent in &fleet.agents {
        let log = agent.log();
        let failed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("event=\"poll_failed\""))
            .collect();
        let mine: Vec<&Seen> = agent.signed(polls).collect();
        let throttled = mine.iter().filter(|s| s.fault.is_some()).count();
        let last_throttled = mine.last().is_some_and(|s| s.fault.is_some());
        let reported = failed.len();
        assert!(
            reported == throttled || (last_throttled && reported + 1 == throttled),
            "{}: {reported} poll_failed events for {throttled} throttled polls. Log:\n{log}",
            agent.key
        );
        for line in failed {
            assert!(
                line.contains("ThrottlingException: Rate exceeded (HTTP 400)"),
                "{line}"
            );
        }
    }
}

/// Per agent, the pauses between its polls: once the throttling has worn off (one level per two
/// accepted polls, five levels at most: ten accepted polls in a row), the next poll waits at least
/// the poll interval (here: half of it, for a busy machine); and no pause is longer than the
/// backoff's cap of 32 polls (plus a second).
fn check_pauses(fleet: &Fleet, polls: &[Seen]) {
    const WORN_OFF: usize = 10;
    for agent in &fleet.agents {
        let mine: Vec<&Seen> = agent.signed(polls).collect();
        assert!(!mine.is_empty(), "{} never polled", agent.key);
        let mut accepted_in_a_row = 0;
        for pair in mine.windows(2) {
            let pause = pair[1].at.duration_since(pair[0].at);
            accepted_in_a_row = match pair[0].fault {
                None => accepted_in_a_row + 1,
                Some(_) => 0,
            };
            if accepted_in_a_row >= WORN_OFF {
                assert!(
                    pause >= POLL / 2,
                    "{} polled again {pause:?} after {accepted_in_a_row} accepted polls",
                    agent.key
                );
            }
            assert!(
                pause <= POLL * 32 + Duration::from_secs(1),
                "{} paused {pause:?}, beyond the backoff's cap",
                agent.key
            );
        }
    }
}

#[test]
fn a_fleet_three_times_over_its_budget_backs_off_and_converges() {
    let case = Case {
        label: "over-budget",
        agents: AGENTS,
        budget: TIGHT_BUDGET,
    };
    let figures = run(&case);
    let plain = case.agents as f64 / POLL.as_secs_f64();
    let steady = &figures.seconds
        [(figures.promoted_at - STEADY).as_secs() as usize..figures.promoted_at.as_secs() as usize];
    assert!(
        steady.iter().all(|s| s.throttled > 0),
        "the budget must bind in the steady state: {steady:?}"
    );
    // Without backoff the fleet would go on offering its plain demand; with it, the throttled
    // agents spread out and the offered rate falls from the start's burst.
    assert!(
        figures.steady_rate < 0.85 * plain && figures.steady_rate < figures.first_peak as f64,
        "the offered rate did not fall: {}/s at first, {:.1}/s later, plain demand {plain:.0}/s",
        figures.first_peak,
        figures.steady_rate
    );
}

#[test]
fn a_fleet_within_its_budget_is_never_throttled_and_converges() {
    let case = Case {
        label: "within-budget",
        agents: AGENTS,
        budget: AMPLE_BUDGET,
    };
    let figures = run(&case);
    let (accepted, offered) = figures.total();
    assert_eq!(accepted, offered, "throttled within the budget");
}
