//! drover.service's sandbox follows the config's paths (issue 18): an instance whose config puts
//! the release root, the state directory and the environment file elsewhere than the shipped
//! unit's `/opt/app` and `/var/lib/drover` deploys there through the drop-in `drover user-data`
//! writes; without the drop-in (a package's unit and an edited config) the agent stops at start
//! with exit status 2, naming the path and the drop-in, and the documented command that writes
//! it (`drover sandbox-paths`) gets it deploying again. Real systemd, journald, cloud-init and
//! moto.

use drover::sandbox::{DROP_IN_PATH, WRITE_DROP_IN};
use drover_tests::{wait_for, Instance, World};
use std::time::Duration;

const DEPLOY: Duration = Duration::from_secs(60);
const ROOT: &str = "/srv/app";
const STATE: &str = "/srv/drover-state";
const ENV_FILE: &str = "/etc/app/app.env";

/// `stat -c FORMAT PATH...` inside, one line per path.
fn stat(instance: &Instance, format: &str, paths: &[&str]) -> Vec<String> {
    let mut args = vec!["stat", "-c", format];
    args.extend_from_slice(paths);
    let out = instance.exec_ok(&args);
    out.lines().map(str::to_owned).collect()
}

/// Whether the running agent can create a file in `dir`, from its own mount namespace.
fn agent_can_write(instance: &Instance, dir: &str) -> bool {
    let pid = instance.unit_property("drover.service", "MainPID");
    assert_ne!(pid, "0", "drover.service has no main process");
    let probe = format!("{dir}/.sandbox-test-probe");
    let script = format!("touch {probe} && rm {probe}");
    let out = instance.exec(&["nsenter", "-t", &pid, "-m", "--", "sh", "-c", &script]);
    out.status.success()
}

#[test]
fn the_sandbox_opens_the_configs_own_root_state_dir_and_environment_file() {
    let world = World::new("sandbox_paths");
    let env_path = world.env_path();
    drover_tests::Moto::shared().put_parameter(&format!("{env_path}/GREETING"), "hello");
    let mut spec = world.boot_spec();
    let default_root = "root = \"/opt/app\"";
    assert!(spec.config_toml.contains(default_root));
    spec.config_toml = spec
        .config_toml
        .replace(default_root, &format!("root = \"{ROOT}\""));
    spec.config_toml.push_str(&format!(
        "\n[agent]\nstate_dir = \"{STATE}\"\n\n[environment]\npath = \"{env_path}\"\nfile = \"{ENV_FILE}\"\n"
    ));
    // The app's unit runs from the new root and reads the new environment file.
    let unit = world
        .app_service()
        .replace("/opt/app/", &format!("{ROOT}/"))
        .replace(
            "[Service]\n",
            &format!("[Service]\nEnvironmentFile=-{ENV_FILE}\n"),
        );
    assert!(!unit.contains("/opt/app"), "{unit}");
    for file in &mut spec.extra_files {
        if file.path == "/etc/systemd/system/app.service" {
            file.content = unit.clone();
        }
    }
    world.release("1.0.0", true);
    let instance = world.boot(spec);

    // user-data: the drop-in, and a deploy into the new root, with the state beside it.
    let deployed = instance.wait_for_events("deployed", 1, DEPLOY);
    assert_eq!(deployed[0]["VERSION"], "1.0.0");
    assert_eq!(instance.served(), "1.0.0");
    let link = instance.exec_ok(&["readlink", &format!("{ROOT}/current")]);
    assert_eq!(link.trim(), "releases/1.0.0");
    assert_eq!(
        stat(
            &instance,
            "%n %a %U",
            &[
                ROOT,
                STATE,
                &format!("{STATE}/state.json"),
                "/etc/app",
                ENV_FILE
            ]
        ),
        [
            format!("{ROOT} 755 root"),
            format!("{STATE} 700 root"),
            format!("{STATE}/state.json 600 root"),
            "/etc/app 755 root".to_string(),
            format!("{ENV_FILE} 600 root"),
        ]
    );
    let env = instance.exec_ok(&["cat", ENV_FILE]);
    assert!(env.contains("GREETING=\"hello\"\n"), "{env}");
    assert_eq!(instance.status_json()["good"], "1.0.0");
    // Nothing made where the shipped unit would have put them.
    for unused in ["/opt/app", "/var/lib/drover"] {
        assert!(!instance.path(unused).exists(), "{unused} was made");
    }
    let shown = instance.unit_property("drover.service", "ReadWritePaths");
    let mut shown: Vec<&str> = shown.split_whitespace().collect();
    shown.sort_unstable();
    assert_eq!(
        shown,
        [
            "-/etc/app",
            "-/srv/app",
            "-/srv/drover-state",
            // The textfile collector's, for [metrics], as the shipped unit has them.
            "-/var/lib/node_exporter/textfile_collector",
            "-/var/lib/prometheus/node-exporter",
        ]
    );
    assert_eq!(
        instance.unit_property("drover.service", "StateDirectory"),
        ""
    );
    for dir in [ROOT, STATE, "/etc/app"] {
        assert!(
            agent_can_write(&instance, dir),
            "{dir} is read-only to the agent"
        );
    }
    for dir in ["/srv", "/etc", "/opt", "/var/lib"] {
        assert!(
            !agent_can_write(&instance, dir),
            "{dir} is writable to the agent"
        );
    }
    let rendered = instance.exec_ok(&["cat", DROP_IN_PATH]);

    // A package's unit: the same unit without the drop-in. The agent refuses to start, once,
    // naming the path and what to do, and stays stopped.
    instance.exec_ok(&["rm", DROP_IN_PATH]);
    instance.exec_ok(&["systemctl", "daemon-reload"]);
    let _ = instance.exec(&["systemctl", "restart", "drover.service"]);
    wait_for(DEPLOY, "drover.service to fail", || {
        (instance.unit_property("drover.service", "ActiveState") == "failed").then_some(())
    });
    assert_eq!(
        instance.unit_property("drover.service", "ExecMainStatus"),
        "2"
    );
    let journal = instance.container.journal_text("drover.service");
    let says = format!("release.root {ROOT}: {ROOT} is read-only to the agent");
    assert!(journal.contains(&says), "{journal}");
    assert!(journal.contains(WRITE_DROP_IN), "{journal}");
    std::thread::sleep(Duration::from_secs(7)); // longer than RestartSec=5s
    assert_eq!(
        instance.unit_property("drover.service", "NRestarts"),
        "0",
        "restarted a config that cannot work"
    );

    // The command the error names writes the same drop-in, and the agent deploys again.
    instance.exec_ok(&["sh", "-c", WRITE_DROP_IN]);
    assert_eq!(instance.exec_ok(&["cat", DROP_IN_PATH]), rendered);
    wait_for(DEPLOY, "drover.service to run", || {
        (instance.unit_property("drover.service", "ActiveState") == "active").then_some(())
    });
    world.release("2.0.0", true);
    let deployed = instance.wait_for_events("deployed", 2, DEPLOY);
    assert_eq!(deployed[1]["VERSION"], "2.0.0");
    assert_eq!(instance.served(), "2.0.0");
    let link = instance.exec_ok(&["readlink", &format!("{ROOT}/current")]);
    assert_eq!(link.trim(), "releases/2.0.0");
}
