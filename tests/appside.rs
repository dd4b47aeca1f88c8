//! The app's side of a deploy, on an instance (real systemd, journald and moto): hooks shipped in
//! the release, the app's environment and secrets from SSM, and webhook notices.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_tests::webhook::Receiver;
use drover_tests::{wait_for, Instance, World};

const DEPLOY: Duration = Duration::from_secs(90);
const SECRET: &str = "s3cret-Value-that-must-not-leak";

fn release_with_hooks(world: &World, version: &str, hooks: &[(&str, &str)]) -> PathBuf {
    world.release_dir_with_hooks(version, hooks)
}

fn ship(world: &World, version: &str, dir: &Path) {
    world.publish(version, dir);
    world.promote(version);
}

/// The environment of the app's running process, from /proc inside the instance.
fn app_environ(instance: &Instance) -> Vec<(String, String)> {
    let pid = instance.unit_property("app.service", "MainPID");
    let raw = instance.exec_ok(&["cat", &format!("/proc/{pid}/environ")]);
    raw.split('\0')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn env_var(instance: &Instance, name: &str) -> Option<String> {
    app_environ(instance)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn events_with(instance: &Instance, event: &str, key: &str, value: &str) -> Vec<serde_json::Value> {
    instance
        .journal_events(event)
        .into_iter()
        .filter(|e| e[key] == value)
        .collect()
}

#[test]
fn hooks_environment_and_notices_through_a_real_instance() {
    let world = World::new("appside");
    let env_path = world.env_path();
    let moto = drover_tests::Moto::shared();
    moto.put_parameter(
        &format!("{env_path}/GREETING"),
        r#"hello "$USER" `and` \ you"#,
    );
    moto.put_parameter_of_type(&format!("{env_path}/DB_PASSWORD"), SECRET, "SecureString");
    let receiver = Receiver::start(1); // the first notice is answered 500, then retried

    let spec = world.boot_spec_with_environment(
        &env_path,
        &format!(
            "\n[hooks]\ntimeout = \"20s\"\nuser = \"nobody\"\n\n\
             [notify]\nwebhook_url = \"{}\"\n",
            receiver.url()
        ),
    );

    // 1.0.0: every hook passes; pre-activate sees the deploy and the app's environment.
    let v1 = release_with_hooks(
        &world,
        "1.0.0",
        &[
            (
                "pre-activate",
                "echo \"migrating to $VERSION from '${PREVIOUS_VERSION}' as $(id -un) in $(pwd) \
                 with ${#DB_PASSWORD} bytes of password\"",
            ),
            ("validate", "echo smoke tests passed"),
            ("post-activate", "echo post-activate for $VERSION"),
        ],
    );
    ship(&world, "1.0.0", &v1);
    let instance = world.boot(spec);
    let deployed = instance.wait_for_events("deployed", 1, DEPLOY);
    assert_eq!(deployed[0]["VERSION"], "1.0.0");
    assert_eq!(instance.served(), "1.0.0");
    let pre = events_with(&instance, "hook_output", "HOOK", "pre-activate");
    assert_eq!(pre.len(), 1, "{pre:?}");
    assert_eq!(
        pre[0]["MESSAGE"],
        format!(
            "migrating to 1.0.0 from '' as nobody in /opt/app/releases/1.0.0 with {} bytes of password",
            SECRET.len()
        )
    );
    assert_eq!(pre[0]["VERSION"], "1.0.0");
    assert_eq!(
        events_with(&instance, "hook_passed", "HOOK", "validate").len(),
        1
    );
    let post = instance.wait_for_events("hook_output", 3, DEPLOY);
    assert!(post
        .iter()
        .any(|e| e["HOOK"] == "post-activate" && e["MESSAGE"] == "post-activate for 1.0.0"));

    // The environment file: both values, exactly, in the app's process; mode 0600.
    assert_eq!(env_var(&instance, "DB_PASSWORD").as_deref(), Some(SECRET));
    assert_eq!(
        env_var(&instance, "GREETING").as_deref(),
        Some(r#"hello "$USER" `and` \ you"#)
    );
    let mode = instance.exec_ok(&["stat", "-c", "%a %U", "/var/lib/drover/app.env"]);
    assert_eq!(mode.trim(), "600 root");

    // The notice arrived despite the first attempt's 500.
    let notice = receiver.wait_for("deployed", Duration::from_secs(20));
    assert_eq!(notice["version"], "1.0.0");
    assert!(notice["text"].as_str().unwrap().contains("Deployed 1.0.0"));
    assert!(receiver.attempts() >= 2);

    // 2.0.0: pre-activate fails; nothing is switched, 1.0.0 keeps serving.
    let v2 = release_with_hooks(
        &world,
        "2.0.0",
        &[("pre-activate", "echo migration failed >&2; exit 4")],
    );
    ship(&world, "2.0.0", &v2);
    let aborted = instance.wait_for_events("deploy_aborted", 1, DEPLOY);
    assert_eq!(aborted[0]["VERSION"], "2.0.0");
    assert!(
        aborted[0]["ERROR"]
            .as_str()
            .unwrap()
            .contains("exit status: 4"),
        "{aborted:?}"
    );
    assert!(events_with(&instance, "switched", "VERSION", "2.0.0").is_empty());
    assert_eq!(instance.served(), "1.0.0");
    assert_eq!(
        instance.current_release().unwrap(),
        Path::new("releases/1.0.0")
    );
    assert_eq!(
        receiver.wait_for("deploy_aborted", Duration::from_secs(20))["version"],
        "2.0.0"
    );

    // 3.0.0: healthy, but its validate hook fails: reverted to 1.0.0.
    let v3 = release_with_hooks(
        &world,
        "3.0.0",
        &[("validate", "echo smoke test failed; exit 2")],
    );
    ship(&world, "3.0.0", &v3);
    let reverted = instance.wait_for_events("reverted", 1, DEPLOY);
    assert_eq!(reverted[0]["VERSION"], "3.0.0");
    assert!(reverted[0]["ERROR"]
        .as_str()
        .unwrap()
        .contains("hook validate failed"));
    assert_eq!(instance.served(), "1.0.0");
    assert_eq!(
        receiver.wait_for("reverted", Duration::from_secs(20))["version"],
        "3.0.0"
    );

    // A changed setting alone restarts the app for it, through the health gate.
    let pid_before = instance.unit_property("app.service", "MainPID");
    moto.put_parameter(&format!("{env_path}/GREETING"), "hello again");
    let changed = instance.wait_for_events("environment_changed", 1, DEPLOY);
    assert_eq!(changed[0]["VARIABLES"], "GREETING");
    instance.wait_for_events("environment_applied", 1, DEPLOY);
    assert_ne!(instance.unit_property("app.service", "MainPID"), pid_before);
    assert_eq!(
        env_var(&instance, "GREETING").as_deref(),
        Some("hello again")
    );
    assert_eq!(instance.served(), "1.0.0");

    // A setting that breaks the app (it listens elsewhere) is taken back.
    moto.put_parameter(
        &format!("{env_path}/APP_PORT"),
        &drover_tests::free_port().to_string(),
    );
    let reverted = instance.wait_for_events("reverted", 2, DEPLOY);
    assert!(
        reverted[1]["MESSAGE"]
            .as_str()
            .unwrap()
            .contains("environment"),
        "{reverted:?}"
    );
    assert_eq!(instance.served(), "1.0.0");
    assert_eq!(
        env_var(&instance, "APP_PORT"),
        Some(world.app_port.to_string())
    );
    assert!(
        !fs::read_to_string(instance.path("/var/lib/drover/app.env"))
            .unwrap()
            .contains("APP_PORT")
    );
    // ...and not tried again on every poll.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(instance.journal_events("environment_changed").len(), 2);

    // The secret is in the file and the app, and nowhere drover reports.
    let journal = instance.exec_ok(&["journalctl", "-u", "drover", "-o", "json", "--no-pager"]);
    assert!(!journal.contains(SECRET), "the secret reached the journal");
    let status = instance.exec_ok(&["drover", "status", "--json"]);
    assert!(!status.contains(SECRET), "the secret reached drover status");
    assert!(status.contains("DB_PASSWORD@1"), "{status}");
    for body in receiver.bodies() {
        assert!(!body.to_string().contains(SECRET));
    }
}

/// Webhook notices over https, trusting the system's roots: with the test CA among them the
/// notice reaches the server; without, the certificate is refused. Either way the deploy stands.
#[test]
fn webhook_notices_go_over_https_and_never_fail_a_deploy() {
    use drover_tests::host::{stderr, Host};
    use drover_tests::https::HttpsServer;

    let world = World::new("webhook-tls");
    let www = world.dir().join("www");
    fs::create_dir_all(&www).unwrap();
    let https = HttpsServer::serve(&www);
    let ca = world.dir().join("test-ca.pem");
    fs::write(&ca, https.ca_pem()).unwrap();
    let endpoint = world.moto.endpoint();
    let url = https.url("hook");
    let host = Host::with_config(
        world,
        &endpoint,
        &format!("[notify]\nwebhook_url = \"{url}\"\n"),
    );

    // python's http.server answers a POST with 501: a failed notice, retried, over a TLS
    // connection the agent accepted.
    host.world.release("1.0.0", true);
    let out = host
        .command(&["once"])
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let posts = https
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST /hook "))
        .count();
    assert_eq!(posts, 3, "three attempts: {:?}", https.requests());
    let err = stderr(&out);
    assert!(
        err.contains("notify_failed") && err.contains("HTTP 501"),
        "{err}"
    );
    assert!(!err.contains(&url), "the URL is not logged: {err}");

    // The system's usual roots do not know the test CA.
    host.world.release("2.0.0", true);
    let out = host
        .command(&["once"])
        .env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(host.current(), "releases/2.0.0");
    let posts = https
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST /hook "))
        .count();
    assert_eq!(posts, 3, "no request got through: {:?}", https.requests());
    assert!(stderr(&out).contains("notify_failed"), "{}", stderr(&out));
}

/// Processes inside the instance whose command line contains `pattern`, as `PID USER ARGS`
/// (`ps` and `pgrep` would count themselves and the shell around them).
fn processes_matching(instance: &Instance, pattern: &str) -> Vec<String> {
    let ps = instance.exec_ok(&["ps", "-e", "-o", "pid=,user=,args="]);
    ps.lines()
        .filter(|l| l.contains(pattern) && !l.contains("ps -e"))
        .map(|l| l.trim().to_owned())
        .collect()
}

/// Issue 13, finding 6: whatever a hook starts is gone once the hook is, however it detached
/// (`setsid`, a double fork, SIGTERM ignored), and at the timeout too. Hooks run as root here.
#[test]
fn regression_detached_hook_processes_do_not_outlive_the_hook() {
    let world = World::new("hook-setsid");
    let mut spec = world.boot_spec();
    spec.config_toml.push_str("\n[hooks]\ntimeout = \"6s\"\n");
    let v1 = release_with_hooks(
        &world,
        "1.0.0",
        &[
            (
                "pre-activate",
                "cat /proc/self/cgroup\n\
                 setsid sleep 3001 </dev/null >/dev/null 2>&1 &\n\
                 setsid sh -c 'trap \"\" TERM HUP INT; exec sleep 3002' &\n\
                 echo started",
            ),
            ("validate", "(setsid sleep 3003 &)\nsleep 3004 &"),
            ("post-activate", "setsid -f sleep 3005"),
        ],
    );
    ship(&world, "1.0.0", &v1);
    let instance = world.boot(spec);
    instance.wait_for_events("deployed", 1, DEPLOY);
    let passed = instance.wait_for_events("hook_passed", 3, DEPLOY);
    assert!(passed.iter().any(|e| e["HOOK"] == "post-activate"));
    let left = processes_matching(&instance, "sleep 300");
    assert!(left.is_empty(), "left behind by the hooks: {left:?}");
    assert_eq!(
        instance.hook_scopes(),
        Vec::<String>::new(),
        "scopes left behind"
    );
    // Each hook ran in a scope of its own, not in drover's cgroup.
    let lines = events_with(&instance, "hook_output", "HOOK", "pre-activate");
    assert!(
        lines.iter().any(|e| e["MESSAGE"]
            .as_str()
            .unwrap()
            .contains("/drover-hook-pre-activate-")),
        "{lines:?}"
    );

    // At the timeout: the hook ignores SIGTERM and waits; what it detached goes with it.
    let v2 = release_with_hooks(
        &world,
        "2.0.0",
        &[(
            "pre-activate",
            "setsid sleep 3006 </dev/null >/dev/null 2>&1 &\n\
             trap '' TERM\necho waiting\nsleep 3007",
        )],
    );
    ship(&world, "2.0.0", &v2);
    assert_timed_out_leaving_nothing(&instance, "sleep 300");
    assert_eq!(instance.served(), "1.0.0");
    assert_no_kill_failed(&instance);

    // Stopping drover stops a hook that is running, as when hooks ran in drover's own cgroup.
    let v3 = release_with_hooks(
        &world,
        "3.0.0",
        &[(
            "pre-activate",
            "setsid sleep 3008 &\necho running\nsleep 3009",
        )],
    );
    ship(&world, "3.0.0", &v3);
    wait_for(DEPLOY, "the 3.0.0 hook to run", || {
        (!events_with(&instance, "hook_output", "VERSION", "3.0.0").is_empty()).then_some(())
    });
    instance.exec_ok(&["systemctl", "stop", "drover.service"]);
    let left = processes_matching(&instance, "sleep 300");
    assert!(left.is_empty(), "left behind when drover stopped: {left:?}");
    assert_eq!(
        instance.hook_scopes(),
        Vec::<String>::new(),
        "scopes left behind"
    );
}

/// Issue 13, findings 5 and 6 with hooks run as the app's own user: the unit gives drover no
/// CAP_KILL, so only systemd can kill what such a hook leaves; and settings from SSM named
/// `PATH`, `LD_PRELOAD` or `BASH_ENV` reach neither the hook (which gets drover's `PATH`) nor the
/// environment file (which keeps the app's `PATH`).
#[test]
fn regression_app_user_hooks_are_killed_and_settings_cannot_steer_them() {
    let world = World::new("hook-app-user");
    let env_path = world.env_path();
    let moto = drover_tests::Moto::shared();
    let app_path = "/opt/app/current/bin:/usr/local/bin:/usr/bin:/bin";
    moto.put_parameter(&format!("{env_path}/GREETING"), "hello");
    moto.put_parameter(&format!("{env_path}/PATH"), app_path);
    moto.put_parameter(&format!("{env_path}/LD_PRELOAD"), "/opt/app/evil.so");
    moto.put_parameter(&format!("{env_path}/BASH_ENV"), "/opt/app/evil.rc");
    let mut spec = world
        .boot_spec_with_environment(&env_path, "\n[hooks]\ntimeout = \"6s\"\nuser = \"app\"\n");
    spec.config_toml = spec
        .config_toml
        .replace("keep = 3", "keep = 3\nowner = \"app\"");
    let instance = world.boot(spec);
    instance.exec_ok(&["useradd", "--system", "--user-group", "app"]);

    let v1 = release_with_hooks(
        &world,
        "1.0.0",
        &[
            (
                "pre-activate",
                "echo \"as $(id -un): PATH=$PATH LD_PRELOAD=${LD_PRELOAD-unset} \
                 BASH_ENV=${BASH_ENV-unset} GREETING=$GREETING\"\nsleep 3011 &",
            ),
            ("validate", "setsid sleep 3012 </dev/null >/dev/null 2>&1 &"),
            ("post-activate", "(trap '' TERM; exec sleep 3013) &"),
        ],
    );
    ship(&world, "1.0.0", &v1);
    instance.wait_for_events("deployed", 1, DEPLOY);
    let passed = instance.wait_for_events("hook_passed", 3, DEPLOY);
    assert!(passed.iter().any(|e| e["HOOK"] == "post-activate"));
    let left = processes_matching(&instance, "sleep 301");
    assert!(
        left.is_empty(),
        "left behind by the app user's hooks: {left:?}"
    );
    assert_eq!(
        instance.hook_scopes(),
        Vec::<String>::new(),
        "scopes left behind"
    );
    let pre = events_with(&instance, "hook_output", "HOOK", "pre-activate");
    assert_eq!(
        pre[0]["MESSAGE"],
        "as app: PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
         LD_PRELOAD=unset BASH_ENV=unset GREETING=hello",
        "{pre:?}"
    );

    // The app keeps its own PATH; the loader and shell variables are not in its file.
    assert_eq!(env_var(&instance, "PATH").as_deref(), Some(app_path));
    assert_eq!(env_var(&instance, "GREETING").as_deref(), Some("hello"));
    assert_eq!(env_var(&instance, "LD_PRELOAD"), None);
    let file = fs::read_to_string(instance.path("/var/lib/drover/app.env")).unwrap();
    assert!(
        !file.contains("LD_PRELOAD") && !file.contains("BASH_ENV"),
        "{file}"
    );

    // At the timeout, as the app user.
    let v2 = release_with_hooks(
        &world,
        "2.0.0",
        &[(
            "pre-activate",
            "setsid sleep 3014 </dev/null >/dev/null 2>&1 &\necho waiting\nexec sleep 3015",
        )],
    );
    ship(&world, "2.0.0", &v2);
    assert_timed_out_leaving_nothing(&instance, "sleep 301");

    // The refusal was said once, naming the variables, not on every pass or hook.
    let refused = instance.journal_events("variables_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["VARIABLES"], "BASH_ENV,LD_PRELOAD");
    assert_eq!(refused[0]["PRIORITY"], "4", "a warning");
    assert_no_kill_failed(&instance);
}

/// Every scope was killed and stopped without an error from systemd.
fn assert_no_kill_failed(instance: &Instance) {
    let journal = instance.container.journal_text("drover.service");
    assert!(!journal.contains("Killing what is left"), "{journal}");
}

/// The deploy was aborted at the hook's 6 s timeout, and nothing the hook started (processes
/// matching `pattern`, its scope) is left.
fn assert_timed_out_leaving_nothing(instance: &Instance, pattern: &str) {
    let aborted = instance.wait_for_events("deploy_aborted", 1, DEPLOY);
    assert!(
        aborted[0]["ERROR"]
            .as_str()
            .unwrap()
            .contains("did not finish within 6 s"),
        "{aborted:?}"
    );
    let left = processes_matching(instance, pattern);
    assert!(left.is_empty(), "left behind at the timeout: {left:?}");
    assert_eq!(
        instance.hook_scopes(),
        Vec::<String>::new(),
        "scopes left behind"
    );
}
