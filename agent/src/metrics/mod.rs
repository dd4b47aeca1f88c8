//! `[metrics] textfile`: what the daemon has done, as a file in Prometheus' text exposition format
//! for node_exporter's textfile collector, written again after each pass.
//!
//! The numbers are the daemon's, kept in memory for the life of the process: the counters start
//! at zero when drover starts (Prometheus' `rate()` and `increase()` take such a reset in their
//! stride), and `drover_start_time_seconds` says when that was. Nothing is persisted; `drover once`
//! and `drover rollback` write nothing, so that a one-off run never puts its own small counts in
//! place of the daemon's.
//!
//! [`Recorder`] holds the numbers, [`Recorder::render`] says them in the text format (`text.rs`:
//! a few lines of it, written by hand rather than with a crate: the binary's size is budgeted),
//! and
//! [`crate::fsutil::write_textfile`] replaces the file whole. A failed write never fails a pass: it is reported
//! once as a `metrics_failed` event, and again only after a write has worked in between.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::events::{emit, Event, Fields};
use crate::fsutil::write_textfile;

mod text;
use text::Text;

/// The textfile collector's directories `drover.service` lets drover write to (`ReadWritePaths=`):
/// node_exporter's as its release is usually set up, and Debian's package's.
pub const SANDBOX_DIRS: [&str; 2] = [
    "/var/lib/node_exporter/textfile_collector",
    "/var/lib/prometheus/node-exporter",
];

/// The timed phases of a deploy, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The artifact's bytes, first request to last byte; its digest is computed as they arrive.
    Download,
    /// The checks around the download: the expected digest and signature read, the size and
    /// disk-space checks, and the signature checked over the file.
    Verify,
    /// Unpacking, `[release] owner`'s chown, the sync, and the rename into `releases/`.
    Unpack,
    /// Restarting the units.
    Restart,
    /// The health gate.
    Health,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Download,
        Phase::Verify,
        Phase::Unpack,
        Phase::Restart,
        Phase::Health,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Download => "download",
            Phase::Verify => "verify",
            Phase::Unpack => "unpack",
            Phase::Restart => "restart",
            Phase::Health => "health",
        }
    }
}

/// One artifact's download.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Download {
    /// The artifact's size.
    pub bytes: u64,
    /// Of them, those fetched this time (the rest were kept from an interrupted download).
    pub fetched: u64,
    pub took: Duration,
}

impl Download {
    /// Bytes fetched over the time it took; `None` for a download that took no measurable time.
    pub fn bytes_per_second(&self) -> Option<f64> {
        let seconds = self.took.as_secs_f64();
        (seconds > 0.0).then(|| self.fetched as f64 / seconds)
    }
}

/// How long the phases of one deploy took, those it went through. Recorded from the deploy's
/// start ([`Timings::started`]) to the end of the new release's own restart and health gate
/// ([`Timings::close`]): a revert's restart and health gate after it are not the deploy's phases.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timings {
    open: bool,
    phases: [Option<Duration>; 5],
    download: Option<Download>,
}

impl Timings {
    pub fn started() -> Self {
        Timings {
            open: true,
            ..Timings::default()
        }
    }

    /// Adds `took` to `phase` (the checks of [`Phase::Verify`] come in two stretches).
    pub fn add(&mut self, phase: Phase, took: Duration) {
        if self.open {
            let slot = &mut self.phases[phase as usize];
            *slot = Some(slot.unwrap_or_default() + took);
        }
    }

    /// Adds the time since `started` to `phase`.
    pub fn since(&mut self, phase: Phase, started: Instant) {
        self.add(phase, started.elapsed());
    }

    pub fn downloaded(&mut self, download: Download) {
        if self.open {
            self.download = Some(download);
        }
    }

    /// Nothing more is recorded until the next [`Timings::started`].
    pub fn close(&mut self) {
        self.open = false;
    }

    pub fn phase(&self, phase: Phase) -> Option<Duration> {
        self.phases[phase as usize]
    }
}

/// How a deploy ended, as `drover_deploys_total` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeployResult {
    Deployed,
    Reverted,
    RevertFailed,
    /// Failed with no previous release to go back to.
    Failed,
    /// The artifact was refused (digest, signature, size, archive contents).
    Rejected,
    /// The pre-activate hook failed; nothing was switched.
    Aborted,
}

impl DeployResult {
    pub const ALL: [DeployResult; 6] = [
        DeployResult::Deployed,
        DeployResult::Reverted,
        DeployResult::RevertFailed,
        DeployResult::Failed,
        DeployResult::Rejected,
        DeployResult::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeployResult::Deployed => "deployed",
            DeployResult::Reverted => "reverted",
            DeployResult::RevertFailed => "revert_failed",
            DeployResult::Failed => "failed",
            DeployResult::Rejected => "rejected",
            DeployResult::Aborted => "aborted",
        }
    }
}

/// How a change of the app's settings (`[environment]`) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvironmentResult {
    Applied,
    Reverted,
    RevertFailed,
}

impl EnvironmentResult {
    pub const ALL: [EnvironmentResult; 3] = [
        EnvironmentResult::Applied,
        EnvironmentResult::Reverted,
        EnvironmentResult::RevertFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EnvironmentResult::Applied => "applied",
            EnvironmentResult::Reverted => "reverted",
            EnvironmentResult::RevertFailed => "revert_failed",
        }
    }
}

/// How one read of the parameter went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    Answered,
    Throttled,
    /// Not found, denied, or the network or the API failed.
    Failed,
}

/// The last deploy that came to an end: its version, how it ended, when, and its phases.
#[derive(Clone, Debug, PartialEq)]
struct LastDeploy {
    version: String,
    result: DeployResult,
    at: SystemTime,
    timings: Timings,
}

/// The daemon's numbers, and where they go.
#[derive(Debug)]
pub struct Recorder {
    /// `None`: no `[metrics] textfile`, or not the daemon: nothing is written.
    textfile: Option<PathBuf>,
    started: SystemTime,
    polls: u64,
    throttled: u64,
    poll_failures: u64,
    deploys: [u64; 6],
    environment: [u64; 3],
    /// The version the parameter asked for at the last read, and the parameter's version;
    /// `None` before the first, or while its value is not a version.
    desired: Option<(String, i64)>,
    last_success: Option<SystemTime>,
    last_deploy: Option<LastDeploy>,
    last_download: Option<Download>,
    /// The error of the last write, if it failed: reported when it came, and not again while
    /// the writes fail the same way.
    failing: Option<String>,
}

impl Recorder {
    pub fn new(textfile: Option<PathBuf>, started: SystemTime) -> Self {
        Recorder {
            textfile,
            started,
            polls: 0,
            throttled: 0,
            poll_failures: 0,
            deploys: [0; 6],
            environment: [0; 3],
            desired: None,
            last_success: None,
            last_deploy: None,
            last_download: None,
            failing: None,
        }
    }

    pub fn polled(&mut self, poll: Poll) {
        self.polls += 1;
        match poll {
            Poll::Answered => {}
            Poll::Throttled => self.throttled += 1,
            Poll::Failed => self.poll_failures += 1,
        }
    }

    /// What the parameter asked for: a version and the parameter's version, or `None` for a
    /// value that is not one.
    pub fn desired(&mut self, desired: Option<(&str, i64)>) {
        self.desired = desired.map(|(v, n)| (v.to_owned(), n));
    }

    /// A deploy of `version` ended as `result` at `at`, after the phases in `timings`.
    pub fn deploy_ended(
        &mut self,
        version: &str,
        result: DeployResult,
        timings: &Timings,
        at: SystemTime,
    ) {
        self.deploys[result as usize] += 1;
        if let Some(download) = timings.download {
            self.last_download = Some(download);
        }
        self.last_deploy = Some(LastDeploy {
            version: version.to_owned(),
            result,
            at,
            timings: timings.clone(),
        });
    }

    pub fn environment_ended(&mut self, result: EnvironmentResult) {
        self.environment[result as usize] += 1;
    }

    /// A pass ended with the desired version running (in sync, deployed, or settings applied).
    pub fn succeeded(&mut self, at: SystemTime) {
        self.last_success = Some(at);
    }

    /// Writes the file, if there is one to write, with `current` as the running version. A
    /// failure is reported, once for as long as the writes fail the same way, and is otherwise
    /// of no consequence.
    pub fn write(&mut self, current: Option<&str>) {
        let Some(path) = self.textfile.clone() else {
            return;
        };
        let e = match write_textfile(&path, &self.render(current)) {
            Ok(()) => {
                self.failing = None;
                return;
            }
            Err(e) => e,
        };
        let error = e.to_string();
        if self.failing.as_ref() == Some(&error) {
            return;
        }
        // The sandbox of drover.service, most likely: a directory it may not write to.
        let hint = match e.source.raw_os_error() == Some(libc::EROFS) {
            true => {
                "; drover.service may write only to the directories its ReadWritePaths= names \
                 that existed when it started: name the directory in a drop-in, or restart \
                 drover if the directory was made since"
            }
            false => "",
        };
        emit(
            Event::MetricsFailed,
            &Fields {
                error: Some(&error),
                ..Fields::default()
            },
            &format!(
                "Cannot write the metrics to {}: {error}{hint}. Deploys go on; this is said again \
                 if the writes fail otherwise",
                path.display()
            ),
        );
        self.failing = Some(error);
    }

    /// The text exposition format (version 0.0.4) of everything recorded.
    pub fn render(&self, current: Option<&str>) -> String {
        let mut out = Text::default();
        out.family(
            "drover_start_time_seconds",
            "gauge",
            "Unix time the drover daemon started; its counters count from then.",
        );
        out.sample(&[], seconds(self.started));
        if let Some((version, parameter_version)) = &self.desired {
            out.family(
                "drover_desired_version_info",
                "gauge",
                "The version the parameter asks for, and the parameter's version, at the last read.",
            );
            let parameter_version = parameter_version.to_string();
            out.sample(
                &[
                    ("version", version.as_str()),
                    ("parameter_version", &parameter_version),
                ],
                1,
            );
        }
        if let Some(version) = current {
            out.family(
                "drover_current_version_info",
                "gauge",
                "The release the current symlink points at.",
            );
            out.sample(&[("version", version)], 1);
        }
        if let Some(at) = self.last_success {
            out.family(
                "drover_last_success_timestamp_seconds",
                "gauge",
                "Unix time of the last pass that ended with the desired version running \
                 (in sync, deployed, or new settings applied).",
            );
            out.sample(&[], seconds(at));
        }
        out.counter(
            "drover_polls_total",
            "Reads of the desired-version parameter.",
            self.polls,
        );
        out.counter(
            "drover_polls_throttled_total",
            "Reads of the parameter that SSM throttled.",
            self.throttled,
        );
        out.counter(
            "drover_polls_failed_total",
            "Reads of the parameter that failed otherwise: not found, denied, network, API.",
            self.poll_failures,
        );
        out.family(
            "drover_deploys_total",
            "counter",
            "Deploys, by how they ended.",
        );
        for result in DeployResult::ALL {
            let count = self.deploys[result as usize];
            out.sample(&[("result", result.as_str())], count);
        }
        out.family(
            "drover_environment_changes_total",
            "counter",
            "Changes of the app's settings ([environment]), by how they ended.",
        );
        for result in EnvironmentResult::ALL {
            let count = self.environment[result as usize];
            out.sample(&[("result", result.as_str())], count);
        }
        if let Some(last) = &self.last_deploy {
            self.render_last_deploy(&mut out, last);
        }
        if let Some(download) = &self.last_download {
            out.family(
                "drover_last_download_bytes",
                "gauge",
                "Size of the last artifact downloaded.",
            );
            out.sample(&[], download.bytes);
            if let Some(rate) = download.bytes_per_second() {
                out.family(
                    "drover_last_download_bytes_per_second",
                    "gauge",
                    "Bytes of the last artifact fetched per second of its download (bytes kept \
                     from an interrupted download not counted).",
                );
                out.sample(&[], rate);
            }
        }
        out.0
    }

    fn render_last_deploy(&self, out: &mut Text, last: &LastDeploy) {
        out.family(
            "drover_last_deploy_info",
            "gauge",
            "The last deploy that ended: its version and how it ended.",
        );
        out.sample(
            &[
                ("version", last.version.as_str()),
                ("result", last.result.as_str()),
            ],
            1,
        );
        out.family(
            "drover_last_deploy_timestamp_seconds",
            "gauge",
            "Unix time the last deploy ended.",
        );
        out.sample(&[], seconds(last.at));
        let timed: Vec<_> = Phase::ALL
            .into_iter()
            .filter_map(|p| last.timings.phase(p).map(|d| (p, d)))
            .collect();
        if !timed.is_empty() {
            out.family(
                "drover_last_deploy_phase_seconds",
                "gauge",
                "How long each phase of the last deploy took (only the phases it went through).",
            );
            for (phase, took) in timed {
                out.sample(&[("phase", phase.as_str())], took.as_secs_f64());
            }
        }
    }
}

/// Unix time in seconds, to the millisecond.
fn seconds(at: SystemTime) -> f64 {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    since.as_millis() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `drover doctor` says of these directories is what the unit file says.
    #[test]
    fn the_unit_lets_drover_write_to_the_sandbox_dirs() {
        let line = format!("\nReadWritePaths=-{}\n", SANDBOX_DIRS.join(" -"));
        assert!(crate::userdata::DROVER_SERVICE.contains(&line), "{line}");
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// Before anything happened: the start time, and every counter at zero (each result has its
    /// series from the start, so that `increase()` sees the first one).
    #[test]
    fn a_fresh_daemon_has_its_counters_at_zero() {
        let text = Recorder::new(None, at(1_700_000_000)).render(None);
        assert!(
            text.starts_with(
                "# HELP drover_start_time_seconds Unix time the drover daemon started; its \
                 counters count from then.\n# TYPE drover_start_time_seconds gauge\n\
                 drover_start_time_seconds 1700000000\n"
            ),
            "{text}"
        );
        for line in [
            "drover_polls_total 0\n",
            "drover_polls_throttled_total 0\n",
            "drover_deploys_total{result=\"deployed\"} 0\n",
            "drover_deploys_total{result=\"aborted\"} 0\n",
            "drover_environment_changes_total{result=\"revert_failed\"} 0\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        for absent in ["version_info", "last_", "download"] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
    }

    #[test]
    fn everything_recorded_in_the_text_format() {
        let mut r = Recorder::new(None, at(1_700_000_000));
        for poll in [
            Poll::Answered,
            Poll::Throttled,
            Poll::Answered,
            Poll::Failed,
        ] {
            r.polled(poll);
        }
        r.desired(Some(("1.2.0", 7)));
        let mut timings = Timings::started();
        timings.add(Phase::Verify, Duration::from_millis(20));
        timings.add(Phase::Download, Duration::from_millis(1500));
        timings.add(Phase::Verify, Duration::from_millis(5));
        timings.downloaded(Download {
            bytes: 3_000_000,
            fetched: 2_000_000,
            took: Duration::from_millis(500),
        });
        timings.add(Phase::Health, Duration::from_secs(2));
        timings.close();
        timings.add(Phase::Health, Duration::from_secs(60));
        r.deploy_ended("1.2.0", DeployResult::Reverted, &timings, at(1_700_000_100));
        r.environment_ended(EnvironmentResult::Applied);
        r.succeeded(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_200_250));
        let text = r.render(Some("1.1.0"));
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "drover_start_time_seconds 1700000000",
                "drover_desired_version_info{version=\"1.2.0\",parameter_version=\"7\"} 1",
                "drover_current_version_info{version=\"1.1.0\"} 1",
                "drover_last_success_timestamp_seconds 1700000200.25",
                "drover_polls_total 4",
                "drover_polls_throttled_total 1",
                "drover_polls_failed_total 1",
                "drover_deploys_total{result=\"deployed\"} 0",
                "drover_deploys_total{result=\"reverted\"} 1",
                "drover_deploys_total{result=\"revert_failed\"} 0",
                "drover_deploys_total{result=\"failed\"} 0",
                "drover_deploys_total{result=\"rejected\"} 0",
                "drover_deploys_total{result=\"aborted\"} 0",
                "drover_environment_changes_total{result=\"applied\"} 1",
                "drover_environment_changes_total{result=\"reverted\"} 0",
                "drover_environment_changes_total{result=\"revert_failed\"} 0",
                "drover_last_deploy_info{version=\"1.2.0\",result=\"reverted\"} 1",
                "drover_last_deploy_timestamp_seconds 1700000100",
                "drover_last_deploy_phase_seconds{phase=\"download\"} 1.5",
                "drover_last_deploy_phase_seconds{phase=\"verify\"} 0.025",
                "drover_last_deploy_phase_seconds{phase=\"health\"} 2",
                "drover_last_download_bytes 3000000",
                "drover_last_download_bytes_per_second 4000000",
            ]
        );
        // Each family once, its HELP then its TYPE right before its samples.
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(families.len(), 14, "{families:?}");
        assert!(families.contains(&"drover_deploys_total counter"));
        assert!(families.contains(&"drover_last_deploy_phase_seconds gauge"));
        assert!(text.contains(
            "# HELP drover_polls_total Reads of the desired-version parameter.\n\
             # TYPE drover_polls_total counter\ndrover_polls_total 4\n"
        ));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut r = Recorder::new(None, at(0));
        r.desired(Some(("a\\b\"c\nd", 1)));
        let text = r.render(Some("x\"y"));
        assert!(
            text.contains("drover_desired_version_info{version=\"a\\\\b\\\"c\\nd\",parameter_version=\"1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("drover_current_version_info{version=\"x\\\"y\"} 1\n"));
    }

    #[test]
    fn a_download_that_took_no_time_has_no_rate() {
        let instant = Download {
            bytes: 1,
            fetched: 1,
            took: Duration::ZERO,
        };
        assert_eq!(instant.bytes_per_second(), None, "no division by zero");
    }

    /// Only what a deploy does between its start and its close counts; a deploy without a
    /// download (a release still on disk) has no download phases.
    #[test]
    fn timings_record_only_while_open() {
        let mut t = Timings::default();
        t.add(Phase::Restart, Duration::from_secs(1));
        assert_eq!(t, Timings::default(), "not started");
        let mut t = Timings::started();
        t.add(Phase::Restart, Duration::from_secs(1));
        t.close();
        t.add(Phase::Restart, Duration::from_secs(1));
        t.downloaded(Download {
            bytes: 1,
            fetched: 1,
            took: Duration::from_secs(1),
        });
        assert_eq!(t.phase(Phase::Restart), Some(Duration::from_secs(1)));
        assert_eq!(t.phase(Phase::Download), None);
        let mut r = Recorder::new(None, at(0));
        r.deploy_ended("1", DeployResult::Deployed, &t, at(1));
        let text = r.render(None);
        assert!(text.contains("drover_last_deploy_phase_seconds{phase=\"restart\"} 1\n"));
        assert!(!text.contains("phase=\"download\""), "{text}");
        assert!(!text.contains("drover_last_download"), "{text}");
    }

    /// A failing write is reported once, not every pass; a failure of another kind, or the next
    /// one after a write has worked, is reported again.
    #[test]
    fn a_failing_write_is_reported_once_per_failure() {
        use tracing_subscriber::layer::SubscriberExt;
        let dir = tempfile::tempdir().unwrap();
        let collector = dir.path().join("textfile_collector");
        let mut r = Recorder::new(Some(collector.join("drover.prom")), at(0));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Events(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            r.write(None);
            r.write(None);
            std::fs::write(&collector, "not a directory").unwrap();
            r.write(None);
            r.write(None);
            std::fs::remove_file(&collector).unwrap();
            std::fs::create_dir(&collector).unwrap();
            r.write(Some("1.0"));
            std::fs::remove_dir_all(&collector).unwrap();
            r.write(None);
            r.write(None);
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        for (event, error) in seen.iter().zip([
            "No such file or directory",
            "Not a directory",
            "No such file or directory",
        ]) {
            assert!(event.contains("event=metrics_failed"), "{event}");
            assert!(event.contains(error), "{error}: {event}");
            assert!(event.contains("textfile_collector"), "{event}");
        }
    }

    /// Each event's fields, as `name=value` pairs.
    struct Events(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
        fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            struct Fields(String);
            impl tracing::field::Visit for Fields {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    self.0 += &format!(" {}={v:?}", f.name());
                }
                fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                    self.0 += &format!(" {}={v}", f.name());
                }
            }
            let mut fields = Fields(String::new());
            e.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }
}
