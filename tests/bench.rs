//! `make bench`: the shipped binary (`make static`) against what a user would otherwise run, on
//! the same machine, in the same run, on inputs this program makes itself. It prints one table of
//! min / median / max over several runs and the ratio of the medians; docs/PERFORMANCE.md
//! records a run. Nothing here is a test: no figure is asserted.
//!
//! Environment: `DROVER_STATIC_BIN` (the binary measured), `BENCH_DIR` (scratch space, default
//! /var/tmp/drover-bench), `BENCH_DEST` (where the local rows unpack, default `BENCH_DIR`; a
//! tmpfs there takes the disk out of the figures), `BENCH_RUNS` (default 5), `BENCH_QUICK=1`
//! (inputs a tenth the size), `BENCH_ONLY=local,s3,daemon,big,zstd` (only those parts: the local
//! verify + unpack rows, the S3 row, the daemon figures, the big artifact behind a per-connection
//! rate cap, zstd against gzip).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use drover_tests::release::Noise;

/// One run of one command.
#[derive(Clone, Copy, Debug)]
struct Sample {
    seconds: f64,
    /// Peak resident set of the command (for a pipeline, its largest process), KiB.
    rss_kib: u64,
}

/// min, median, max.
#[derive(Clone, Copy, Debug)]
struct Spread {
    min: f64,
    median: f64,
    max: f64,
}

fn spread(mut values: Vec<f64>) -> Spread {
    values.sort_by(|a, b| a.total_cmp(b));
    Spread {
        min: values[0],
        median: values[values.len() / 2],
        max: values[values.len() - 1],
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} / {:.2} / {:.2}", self.min, self.median, self.max)
    }
}

struct Bench {
    drover: PathBuf,
    dir: PathBuf,
    /// Where the local rows unpack.
    dest: PathBuf,
    runs: usize,
    quick: bool,
    table: String,
}

/// Runs `cmd` to completion under GNU time for its peak RSS; panics when it fails.
fn timed(cmd: &mut Command, rss_file: &Path) -> Sample {
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut wrapped = Command::new("/usr/bin/time");
    wrapped
        .args(["-f", "%M", "-o"])
        .arg(rss_file)
        .arg(&program)
        .args(&args)
        .stdout(Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    let started = Instant::now();
    let out = wrapped
        .output()
        .expect("run the command under /usr/bin/time");
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{program:?} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rss_kib = fs::read_to_string(rss_file)
        .expect("time's output")
        .trim()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("a peak RSS figure");
    Sample { seconds, rss_kib }
}

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    cmd
}

/// A release tree: one large file that compresses about 2:1 (half of every 4 KiB block random,
/// half text), plus `small` files of 1 to 4 KiB of text in 100 directories.
fn make_tree(root: &Path, large: u64, small: usize) {
    fs::create_dir_all(root).unwrap();
    let mut noise = Noise::default();
    let text = b"drover deploys releases from S3 to EC2 instances and switches back on failure. ";
    let mut block = vec![0u8; 4096];
    for (i, b) in block[2048..].iter_mut().enumerate() {
        *b = text[i % text.len()];
    }
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        fs::File::create(root.join("large.bin")).unwrap(),
    );
    for _ in 0..large / 4096 {
        noise.fill(&mut block[..2048]);
        out.write_all(&block).unwrap();
    }
    out.flush().unwrap();
    let mut word = [0u8; 8];
    for i in 0..small {
        let dir = root.join(format!("static/d{:03}", i % 100));
        if i < 100 {
            fs::create_dir_all(&dir).unwrap();
        }
        noise.fill(&mut word);
        let len = 1024 + (word[0] as usize) * 12;
        let body: Vec<u8> = (0..len)
            .map(|j| text[(j + word[1] as usize) % text.len()])
            .collect();
        fs::write(dir.join(format!("f{i}.txt")), body).unwrap();
    }
}

/// `tree` packed as `out` with GNU tar and gzip -6, as a release pipeline would.
fn pack(tree: &Path, out: &Path) {
    let ok = Command::new("tar")
        .arg("-czf")
        .arg(out)
        .arg("-C")
        .arg(tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success(), "tar -czf {}", out.display());
}

impl Bench {
    fn scratch(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        let _ = fs::remove_dir_all(&path);
        path
    }

    /// A `.tar.gz` of about `compressed_mb` MB with `small` small files, made once and kept.
    fn artifact(&self, compressed_mb: u64, small: usize) -> (PathBuf, String) {
        let compressed_mb = if self.quick {
            compressed_mb / 10
        } else {
            compressed_mb
        };
        let path = self
            .dir
            .join(format!("release-{compressed_mb}mb-{small}.tar.gz"));
        if !path.exists() {
            let tree = self.scratch("tree");
            eprintln!("bench: making {} ...", path.display());
            make_tree(&tree, compressed_mb * 2 * 1_000_000, small);
            let tmp = path.with_extension("tmp");
            pack(&tree, &tmp);
            fs::rename(&tmp, &path).unwrap();
            fs::remove_dir_all(&tree).unwrap();
        }
        let digest = drover_tests::sha256_file(&path);
        (path, digest)
    }

    fn row(&mut self, what: &str, ours: &[Sample], theirs: &[Sample], baseline: &str) {
        let t_ours = spread(ours.iter().map(|s| s.seconds).collect());
        let t_theirs = spread(theirs.iter().map(|s| s.seconds).collect());
        let m_ours = spread(ours.iter().map(|s| s.rss_kib as f64 / 1024.0).collect());
        let m_theirs = spread(theirs.iter().map(|s| s.rss_kib as f64 / 1024.0).collect());
        let line = format!(
            "| {what} | {t_ours} | {t_theirs} | **{:.2}×** | {m_ours} | {m_theirs} | {baseline} |\n",
            t_ours.median / t_theirs.median
        );
        eprint!("{line}");
        self.table.push_str(&line);
    }

    /// 1 and 2: verify + unpack of a local file, against sha256sum && tar -xzf.
    fn local_unpack(&mut self, compressed_mb: u64, small: usize) {
        let (archive, digest) = self.artifact(compressed_mb, small);
        let size_mb = fs::metadata(&archive).unwrap().len() as f64 / 1e6;
        let rss = self.dir.join("rss");
        let (mut ours, mut plain, mut synced) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..self.runs {
            // Alternate the order, so that neither always follows the other's writeback.
            let one = |which: usize| {
                let dest = self.dest.join("dest");
                let _ = fs::remove_dir_all(&dest);
                let a = archive.display();
                let d = dest.display();
                let sample = match which {
                    0 => timed(
                        Command::new(&self.drover)
                            .args(["unpack", "--sha256", &digest])
                            .arg(&archive)
                            .arg(&dest),
                        &rss,
                    ),
                    1 => timed(
                        &mut sh(&format!(
                            "mkdir {d} && sha256sum {a} >/dev/null && tar -xzf {a} -C {d}"
                        )),
                        &rss,
                    ),
                    _ => timed(
                        &mut sh(&format!(
                            "mkdir {d} && sha256sum {a} >/dev/null && tar -xzf {a} -C {d} && sync -f {d}"
                        )),
                        &rss,
                    ),
                };
                fs::remove_dir_all(&dest).unwrap();
                sh("sync").status().unwrap();
                sample
            };
            let order = if run % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
            for which in order {
                let s = one(which);
                [&mut ours, &mut plain, &mut synced][which].push(s);
            }
        }
        let onto = if self.dest == self.dir {
            String::new()
        } else {
            format!(" into {}", self.dest.display())
        };
        let what = format!("verify + unpack, {size_mb:.0} MB .tar.gz, {small} small files{onto}");
        self.row(&what, &ours, &plain, "`sha256sum f && tar -xzf f -C d`");
        self.row(
            &format!("{what} (durable)"),
            &ours,
            &synced,
            "the same `&& sync -f d`",
        );
    }
}

/// An agent on this host against the bench's own moto: config, release root and state dir.
struct Agent {
    config: PathBuf,
    root: PathBuf,
    state: PathBuf,
}

/// A `drover run` in the background, its stderr going to a file.
struct Daemon {
    child: std::process::Child,
    log: PathBuf,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `count` lines with `needle`; returns when it saw them.
    fn wait_for(&self, needle: &str, count: usize, limit: std::time::Duration) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            if self.log_text().matches(needle).count() >= count {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for {count} × {needle:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// VmRSS, KiB.
    fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// User + system CPU time so far, seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // The fields after the command name, which is in parentheses and may hold spaces.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the agent's stderr says when `version` is deployed.
fn deployed(version: &str) -> String {
    format!("event=\"deployed\" version=\"{version}\"")
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

const AWS_ENV: [(&str, &str); 3] = drover_tests::world::AWS_ENV;

/// What a user would otherwise run: boto3's `download_file` of version 1 from `bucket` at
/// `endpoint` into `fetched`, `sha256sum`, `tar -xzf` into the new `dest`, `sync -f`.
fn boto3_pipeline(endpoint: &str, bucket: &str, fetched: &Path, dest: &Path) -> Command {
    let python = drover_tests::cache_dir().join("venv/bin/python3");
    let download = format!(
        "import boto3; boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1')\
         .download_file('{bucket}', 'releases/1.tar.gz', '{}')",
        fetched.display()
    );
    let (f, d) = (fetched.display(), dest.display());
    let mut cmd = sh(&format!(
        "{} -c \"{download}\" && sha256sum {f} >/dev/null && mkdir {d} && \
         tar -xzf {f} -C {d} && sync -f {d}",
        python.display()
    ));
    cmd.envs(AWS_ENV);
    cmd
}

impl Bench {
    fn agent(&self, name: &str, moto: &drover_tests::Moto, bucket: &str, extra: &str) -> Agent {
        let base = self.dir.join(name);
        let agent = Agent {
            config: base.join("config.toml"),
            root: base.join("app"),
            state: base.join("state"),
        };
        fs::create_dir_all(&base).unwrap();
        fs::write(
            &agent.config,
            format!(
                "[source]\nparameter = \"/bench/{name}\"\npoll_interval = \"1s\"\n\
                 [artifact]\nbucket = \"{bucket}\"\n\
                 [release]\nroot = \"{}\"\n\
                 [service]\nunits = []\n\
                 [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\
                 [agent]\nstate_dir = \"{}\"\n{extra}",
                agent.root.display(),
                moto.endpoint(),
                agent.state.display()
            ),
        )
        .unwrap();
        agent
    }

    fn drover(&self, agent: &Agent, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.drover);
        cmd.arg("--config")
            .arg(&agent.config)
            .args(args)
            .envs(AWS_ENV);
        cmd
    }

    fn ok(&self, agent: &Agent, args: &[&str]) {
        let out = self.drover(agent, args).output().unwrap();
        assert!(
            out.status.success(),
            "drover {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn daemon(&self, agent: &Agent, name: &str) -> Daemon {
        let log = self.dir.join(format!("{name}.log"));
        let child = self
            .drover(agent, &["-v", "run"])
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    /// 3: fetch from the S3 emulator + verify + unpack, against boto3 + sha256sum + tar. moto
    /// serves a few MB/s, so a 100 MB artifact keeps the run short; the emulator dominates.
    fn s3_fetch(&mut self, moto: &drover_tests::Moto) {
        let (archive, _) = self.artifact(100, 2_000);
        let size_mb = fs::metadata(&archive).unwrap().len() as f64 / 1e6;
        let bucket = "bench-s3";
        moto.create_bucket(bucket);
        let agent = self.agent("s3", moto, bucket, "");
        self.ok(
            &agent,
            &["publish", "--version", "1", &archive.to_string_lossy()],
        );
        self.ok(&agent, &["promote", "1"]);
        let fetched = self.dir.join("fetched.tar.gz");
        let rss = self.dir.join("rss");
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for run in 0..self.runs {
            let one = |which: usize| {
                let _ = fs::remove_dir_all(&agent.root);
                let _ = fs::remove_dir_all(&agent.state);
                let dest = self.scratch("dest");
                let sample = if which == 0 {
                    timed(&mut self.drover(&agent, &["once"]), &rss)
                } else {
                    let mut cmd = boto3_pipeline(&moto.endpoint(), bucket, &fetched, &dest);
                    timed(&mut cmd, &rss)
                };
                let _ = fs::remove_dir_all(&dest);
                let _ = fs::remove_file(&fetched);
                sh("sync").status().unwrap();
                sample
            };
            let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let s = one(which);
                [&mut ours, &mut theirs][which].push(s);
            }
        }
        self.row(
            &format!("fetch from moto + verify + unpack, {size_mb:.0} MB (durable)"),
            &ours,
            &theirs,
            "boto3 `download_file` + `sha256sum` + `tar -xzf` + `sync -f`",
        );
    }

    /// 4: `drover run` idle, then after 20 deployments, with every feature of issue 15
    /// configured: lease slots, a target group, a launch hook (the instance is in no target group
    /// and no action is pending, so each is asked about and nothing waits); and `[metrics]`. 5: promote to
    /// healthy, 100 MB.
    fn daemon_figures(&mut self, moto: &drover_tests::Moto) {
        use drover_tests::faultproxy::{FaultProxy, Front};
        let bucket = "bench-daemon";
        moto.create_bucket(bucket);
        let lifecycle = drover_tests::autoscaling::Lifecycle::default();
        let elb = drover_tests::elb::Elb::start(drover_tests::elb::Settings::default());
        let fronts: Vec<std::sync::Arc<dyn Front>> = vec![lifecycle.front(), elb.front()];
        let proxy = FaultProxy::with_front(std::sync::Arc::new(fronts));
        let imds = drover_tests::imds::Imds::start("i-0be4c40000000000f");
        imds.set("autoscaling/target-lifecycle-state", "InService");
        imds.set("tags/instance/aws:autoscaling:groupName", "bench");
        drover_tests::autoscaling::put_lifecycle_hook(
            "bench",
            "launch",
            "autoscaling:EC2_INSTANCE_LAUNCHING",
            300,
        );
        let group =
            drover_tests::elb::create_target_group("bench", std::time::Duration::from_secs(30));
        // And issue 18's: the textfile metrics written after every pass.
        let metrics = self.dir.join("metrics");
        fs::create_dir_all(&metrics).unwrap();
        let features = format!(
            "[fleet]\nstatus_prefix = \"fleet/\"\nmax_in_flight = 1\n\
             [loadbalancer]\ntarget_groups = [\"{group}\"]\nport = 8080\n\
             [autoscaling]\nlaunch_hook = \"launch\"\n\
             [metrics]\ntextfile = \"{}\"\n",
            metrics.join("drover.prom").display()
        );
        let agent = self.agent("idle", moto, bucket, &features);
        let text = fs::read_to_string(&agent.config).unwrap();
        let text = text.replace(&moto.endpoint(), &proxy.endpoint()).replace(
            "[aws]\n",
            &format!("[aws]\nmetadata_endpoint_url = \"{}\"\n", imds.endpoint()),
        );
        fs::write(&agent.config, text).unwrap();
        let small = self.dir.join("small");
        make_tree(&small, 64 << 10, 10);
        for v in 1..=20 {
            let tarball = self.dir.join(format!("small-{v}.tar.gz"));
            fs::write(small.join("VERSION"), format!("{v}\n")).unwrap();
            pack(&small, &tarball);
            self.ok(
                &agent,
                &[
                    "publish",
                    "--version",
                    &v.to_string(),
                    &tarball.to_string_lossy(),
                ],
            );
        }
        self.ok(&agent, &["promote", "1"]);
        let daemon = self.daemon(&agent, "idle");
        daemon.wait_for(&deployed("1"), 1, std::time::Duration::from_secs(60));
        let rss_first = daemon.rss_kib();

        let idle = std::env::var("BENCH_IDLE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(if self.quick { 60 } else { 600 });
        let ssm_calls = || {
            fs::read_to_string(moto.log())
                .unwrap_or_default()
                .matches("\"POST / HTTP/1.1\"")
                .count()
        };
        let passes = || daemon.log_text().matches(" decided ").count();
        let (calls0, passes0, cpu0, t0) =
            (ssm_calls(), passes(), daemon.cpu_seconds(), Instant::now());
        std::thread::sleep(std::time::Duration::from_secs(idle));
        let (calls, polls) = (ssm_calls() - calls0, passes() - passes0);
        let cpu = (daemon.cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
        let rss_idle = daemon.rss_kib();
        let peak_idle = proc_status_kib(daemon.pid(), "VmHWM");
        let (anon, file) = (
            proc_status_kib(daemon.pid(), "RssAnon"),
            proc_status_kib(daemon.pid(), "RssFile"),
        );

        for v in 2..=20 {
            self.ok(&agent, &["promote", &v.to_string()]);
            daemon.wait_for(
                &deployed(&v.to_string()),
                1,
                std::time::Duration::from_secs(60),
            );
        }
        let rss_20 = daemon.rss_kib();
        drop(daemon);
        let line = format!(
            "\n`drover run` with [fleet] max_in_flight, [loadbalancer], [autoscaling] and [metrics], \
             poll_interval 1s, idle {idle} s: {polls} polls, {calls} GetParameter \
             calls, CPU {cpu:.3} % of one core, RSS {:.1} MiB (peak {:.1} MiB; anonymous {:.1}, \
             the binary's pages {:.1})\n\
             RSS after the first deployment {:.1} MiB, after 20: {:.1} MiB ({:.2}×)\n",
            rss_idle as f64 / 1024.0,
            peak_idle as f64 / 1024.0,
            anon as f64 / 1024.0,
            file as f64 / 1024.0,
            rss_first as f64 / 1024.0,
            rss_20 as f64 / 1024.0,
            rss_20 as f64 / rss_first as f64
        );
        eprint!("{line}");
        self.table.push_str(&line);

        // 5: the app is a static file server that is always healthy; only the agent's work
        // (noticing the promote, fetching 100 MB, unpacking, the health check) is timed.
        let port = drover_tests::free_port();
        let www = self.scratch("www");
        fs::create_dir_all(&www).unwrap();
        fs::write(www.join("health"), "ok\n").unwrap();
        let _server = Daemon {
            child: Command::new("python3")
                .args([
                    "-m",
                    "http.server",
                    "--bind",
                    "127.0.0.1",
                    &port.to_string(),
                ])
                .current_dir(&www)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
            log: PathBuf::new(),
        };
        let poll = 10;
        let agent = self.agent(
            "latency",
            moto,
            bucket,
            &format!(
                "[health]\nurl = \"http://127.0.0.1:{port}/health\"\ninterval = \"100ms\"\nsuccesses = 2\n"
            ),
        );
        let text = fs::read_to_string(&agent.config).unwrap().replace(
            "poll_interval = \"1s\"",
            &format!("poll_interval = \"{poll}s\""),
        );
        fs::write(&agent.config, text).unwrap();
        let (archive, _) = self.artifact(100, 2_000);
        let size_mb = fs::metadata(&archive).unwrap().len() as f64 / 1e6;
        // The wait for the next poll is uniform over the cycle: a median needs more samples than
        // the other rows.
        let samples = self.runs.max(11);
        for run in 0..samples {
            let v = format!("lat-{run}");
            self.ok(
                &agent,
                &["publish", "--version", &v, &archive.to_string_lossy()],
            );
        }
        self.ok(&agent, &["promote", "1"]);
        let daemon = self.daemon(&agent, "latency");
        daemon.wait_for(&deployed("1"), 1, std::time::Duration::from_secs(60));
        let mut seconds = Vec::new();
        for run in 0..samples {
            // Promote at a random point of the poll cycle, as an operator would.
            let phase = drover::plan::random_unit() * poll as f64;
            std::thread::sleep(std::time::Duration::from_secs_f64(1.0 + phase));
            let v = format!("lat-{run}");
            let started = Instant::now();
            self.ok(&agent, &["promote", &v]);
            let done = daemon.wait_for(
                &deployed(&v.to_string()),
                1,
                std::time::Duration::from_secs(120),
            );
            seconds.push(done.duration_since(started).as_secs_f64());
        }
        let s = spread(seconds);
        let line = format!(
            "promote to healthy, {size_mb:.0} MB artifact, poll_interval {poll}s: {s} s \
             (target: median at most {:.1} s)\n",
            poll as f64 / 2.0 + 2.0
        );
        eprint!("{line}");
        self.table.push_str(&line);
    }
}

/// The per-connection rate of the big-artifact rows: S3's is 85 to 90 MB/s on EC2; this one is
/// lower, so that several connections together are bound by this machine, not by the cap.
const CAP_BYTES_PER_SECOND: u64 = 20_000_000;

impl Bench {
    /// A config like [`Bench::agent`]'s that goes through `proxy` instead of straight to moto.
    fn agent_behind(
        &self,
        name: &str,
        moto: &drover_tests::Moto,
        proxy: &drover_tests::faultproxy::FaultProxy,
        bucket: &str,
        artifact: &str,
    ) -> Agent {
        let agent = self.agent(name, moto, bucket, "");
        let text = fs::read_to_string(&agent.config)
            .unwrap()
            .replace(&moto.endpoint(), &proxy.endpoint())
            .replace(
                &format!("bucket = \"{bucket}\"\n"),
                &format!("bucket = \"{bucket}\"\n{artifact}\n"),
            );
        fs::write(&agent.config, text).unwrap();
        agent
    }

    /// 6 (issue 16): a big artifact behind a proxy that caps each connection's rate as S3 does:
    /// `drover once` (fetch, verify, unpack, switch) with 8 connections and with 1, against
    /// boto3's `download_file` (10 threads of 8 MB parts) + `sha256sum` + `tar -xzf` + `sync -f`;
    /// the bytes fetched again after a kill -9 halfway; and how long a full disk takes to fail.
    fn big_artifacts(&mut self, moto: &drover_tests::Moto) {
        let (archive, _) = self.artifact(140, 2_000);
        let size = fs::metadata(&archive).unwrap().len();
        let size_mib = size as f64 / 1_048_576.0;
        let bucket = "bench-big";
        moto.create_bucket(bucket);
        let proxy = drover_tests::faultproxy::FaultProxy::in_front_of_moto();
        let publisher = self.agent("big-publish", moto, bucket, "");
        self.ok(
            &publisher,
            &["publish", "--version", "1", &archive.to_string_lossy()],
        );
        // Quick runs (a 14 MB artifact) cut it in 1 MiB parts, so that it still comes in parts.
        let part_size: u64 = if self.quick { 1 << 20 } else { 16 << 20 };
        let parts_line = format!("download_part_size = \"{}MiB\"", part_size >> 20);
        let wide = self.agent_behind(
            "big8",
            moto,
            &proxy,
            bucket,
            &format!("download_connections = 8\n{parts_line}"),
        );
        let narrow = self.agent_behind(
            "big1",
            moto,
            &proxy,
            bucket,
            &format!("download_connections = 1\n{parts_line}"),
        );
        for agent in [&wide, &narrow] {
            fs::write(
                &agent.config,
                fs::read_to_string(&agent.config)
                    .unwrap()
                    .replace("parameter = \"/bench/big8\"", "parameter = \"/bench/big\"")
                    .replace("parameter = \"/bench/big1\"", "parameter = \"/bench/big\""),
            )
            .unwrap();
        }
        self.ok(&wide, &["promote", "1"]);
        proxy.cap_rate(CAP_BYTES_PER_SECOND);

        let fetched = self.dir.join("fetched-big.tar.gz");
        let rss = self.dir.join("rss");
        let clean = |agent: &Agent| {
            let _ = fs::remove_dir_all(&agent.root);
            let _ = fs::remove_dir_all(&agent.state);
        };
        let (mut wide_s, mut narrow_s, mut boto_s) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.runs {
            for which in 0..3 {
                let sample = match which {
                    0 | 1 => {
                        let agent = [&wide, &narrow][which];
                        clean(agent);
                        timed(&mut self.drover(agent, &["once"]), &rss)
                    }
                    _ => {
                        let dest = self.scratch("dest-big");
                        let mut cmd = boto3_pipeline(&proxy.endpoint(), bucket, &fetched, &dest);
                        let sample = timed(&mut cmd, &rss);
                        let _ = fs::remove_dir_all(&dest);
                        let _ = fs::remove_file(&fetched);
                        sample
                    }
                };
                sh("sync").status().unwrap();
                [&mut wide_s, &mut narrow_s, &mut boto_s][which].push(sample);
            }
        }
        let cap = CAP_BYTES_PER_SECOND / 1_000_000;
        let baseline = format!(
            "boto3 `download_file` (10 threads) + `sha256sum` + `tar -xzf` + `sync -f`, each \
             connection capped at {cap} MB/s"
        );
        self.row(
            &format!(
                "fetch + verify + unpack + switch, {size_mib:.0} MiB, 8 connections at {cap} MB/s"
            ),
            &wide_s,
            &boto_s,
            &baseline,
        );
        self.row(
            &format!(
                "fetch + verify + unpack + switch, {size_mib:.0} MiB, 1 connection at {cap} MB/s"
            ),
            &narrow_s,
            &boto_s,
            &baseline,
        );

        // Killed with -9 once half the parts are recorded; the next run resumes.
        clean(&wide);
        let record = wide.root.join(".downloads/1.part.json");
        let sent_before = proxy.bytes_sent();
        let mut first = self
            .drover(&wide, &["once"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let parts = size.div_ceil(part_size) as usize;
        let deadline = Instant::now() + std::time::Duration::from_secs(300);
        let done = loop {
            let done = fs::read(&record)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|r| r["done"].as_array().map(Vec::len))
                .unwrap_or(0);
            if done * 2 >= parts || Instant::now() > deadline {
                break done;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        first.kill().unwrap();
        first.wait().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        self.ok(&wide, &["once"]);
        let refetched = (proxy.bytes_sent() - sent_before).saturating_sub(size);
        let line = format!(
            "\nkill -9 with {done} of {parts} parts recorded, then `drover once` again: \
             {:.1} MiB fetched twice (goal at most one part per connection, 8 × {} MiB)\n",
            refetched as f64 / 1_048_576.0,
            part_size >> 20
        );
        eprint!("{line}");
        self.table.push_str(&line);
        proxy.cap_rate(0);

        // A full disk: a file system for the release root with a quarter of the artifact free.
        let free_mib = (size >> 22).max(1);
        let small = self.agent_behind("big-full", moto, &proxy, bucket, "");
        fs::write(
            &small.config,
            fs::read_to_string(&small.config).unwrap().replace(
                "parameter = \"/bench/big-full\"",
                "parameter = \"/bench/big\"",
            ),
        )
        .unwrap();
        fs::create_dir_all(&small.root).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={free_mib}m"), "tmpfs"])
            .arg(&small.root)
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "mount a tmpfs at {}",
            small.root.display()
        );
        let gets_before = proxy.seen().len();
        let started = Instant::now();
        let out = self.drover(&small, &["once"]).output().unwrap();
        let took = started.elapsed().as_secs_f64();
        let _ = Command::new("umount").arg(&small.root).status();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("bytes needed"), "{text}");
        let tarball_gets = proxy.seen()[gets_before..]
            .iter()
            .filter(|s| s.method == "GET" && s.path.ends_with(".tar.gz"))
            .count();
        let line = format!(
            "full disk ({free_mib} MiB free for a {size_mib:.0} MiB artifact): `drover once` failed after \
             {:.0} ms with {tarball_gets} GETs of the artifact (goal under 1 s, before any \
             download)\n",
            took * 1000.0
        );
        eprint!("{line}");
        self.table.push_str(&line);
    }

    /// 7 (issue 16): the big artifact's tar stream as `.tar.zst` against `.tar.gz`, `drover
    /// unpack` alone (local files), into a tmpfs: the disk (and the sync, the same for both) out
    /// of the figure.
    fn zstd_unpack(&mut self) {
        let (archive, _) = self.artifact(140, 2_000);
        let size_mib = fs::metadata(&archive).unwrap().len() as f64 / 1_048_576.0;
        let publisher = self.agent("zstd", drover_tests::Moto::shared(), "bench-zstd", "");
        let rss = self.dir.join("rss");
        let zst = archive.with_extension("zst");
        if !zst.exists() {
            let bytes = drover_tests::release::zstd_of_gzip(&fs::read(&archive).unwrap())
                .expect("recompress");
            fs::write(&zst, bytes).unwrap();
        }
        let (mut zs, mut gz) = (Vec::new(), Vec::new());
        for _ in 0..self.runs {
            for (file, into) in [(&zst, &mut zs), (&archive, &mut gz)] {
                let dest = PathBuf::from("/dev/shm/drover-bench-unpack");
                let _ = fs::remove_dir_all(&dest);
                let mut cmd = self.drover(&publisher, &["unpack"]);
                cmd.arg(file).arg(&dest);
                into.push(timed(&mut cmd, &rss));
                let _ = fs::remove_dir_all(&dest);
            }
        }
        let zst_mib = fs::metadata(&zst).unwrap().len() as f64 / 1_048_576.0;
        self.row(
            &format!(
                "`drover unpack` of the same tree as .tar.zst ({zst_mib:.0} MiB, level 9) \
                 against .tar.gz ({size_mib:.0} MiB)"
            ),
            &zs,
            &gz,
            "drover's own .tar.gz path (`drover unpack`), both into a tmpfs",
        );
    }
}

fn main() {
    let drover = std::env::var_os("DROVER_STATIC_BIN")
        .map(PathBuf::from)
        .expect("DROVER_STATIC_BIN: run `make bench`, which builds it");
    let dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/drover-bench"));
    fs::create_dir_all(&dir).unwrap();
    let runs = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let quick = std::env::var_os("BENCH_QUICK").is_some_and(|v| v == "1");
    let dest = std::env::var_os("BENCH_DEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.clone());
    // BENCH_ONLY=local,s3,daemon,big,zstd (any of them): only those parts; all by default.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only.split(',').any(|p| p.trim() == name);
    let mut bench = Bench {
        drover,
        dest,
        dir,
        runs,
        quick,
        table: String::new(),
    };

    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mut head = String::new();
    writeln!(
        head,
        "drover bench: {} (\"{cpu}\", {} cores), {} runs each, figures min / median / max",
        bench.drover.display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        runs
    )
    .unwrap();
    head.push_str("| what | drover s | baseline s | time ratio | drover peak RSS MiB | baseline peak RSS MiB | baseline |\n");
    head.push_str("|---|---|---|---|---|---|---|\n");
    eprint!("{head}");

    if part("local") {
        bench.local_unpack(500, 20_000);
        bench.local_unpack(100, 2_000);
        bench.local_unpack(2000, 2_000);
    }
    if part("big") {
        bench.big_artifacts(drover_tests::Moto::shared());
    }
    if part("zstd") {
        bench.zstd_unpack();
    }
    if part("s3") || part("daemon") {
        // The shared one: the harness's target groups and lifecycle hooks are made in it.
        let moto = drover_tests::Moto::shared();
        if part("s3") {
            bench.s3_fetch(moto);
        }
        if part("daemon") {
            bench.daemon_figures(moto);
        }
    }

    let size = fs::metadata(&bench.drover).unwrap().len();
    let tail = format!(
        "\nstatic binary: {size} bytes ({:.2} MiB; target at most 10 MB)\n",
        size as f64 / 1_048_576.0
    );
    println!("{head}{}{tail}", bench.table);
}
