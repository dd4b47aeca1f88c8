//! The drop-in as systemd will read it, for the default paths and others, and the paths it
//! refuses; the start-up check on paths this test can write.

use super::*;

const SOURCE: &str = "/etc/drover/config.toml";

fn config(extra: &str) -> Config {
    let text = format!("[artifact]\nbucket = \"b\"\n{extra}");
    Config::parse(&text, Path::new(SOURCE)).unwrap()
}

/// The drop-in's settings, without its comment.
fn settings(extra: &str) -> Vec<String> {
    let text = drop_in(&config(extra), Path::new(SOURCE)).unwrap();
    assert!(text.starts_with(&format!(
        "# drover.service's writable directories for {SOURCE} "
    )));
    let mut lines: Vec<String> = (text.lines())
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    // The textfile collector's directories close every drop-in (tested below).
    assert_eq!(lines.pop().as_deref(), Some(COLLECTORS), "{text}");
    lines
}

const COLLECTORS: &str =
    "ReadWritePaths=-/var/lib/node_exporter/textfile_collector -/var/lib/prometheus/node-exporter";

#[test]
fn the_textfile_collector_s_directories_stay_writable_and_metrics_adds_its_own() {
    let text = drop_in(
        &config("[metrics]\ntextfile = \"/srv/metrics/drover.prom\"\n"),
        Path::new(SOURCE),
    )
    .unwrap();
    assert!(
        text.ends_with(&format!("{COLLECTORS} -/srv/metrics\n")),
        "{text}"
    );
    let text = drop_in(
        &config("[metrics]\ntextfile = \"/var/lib/prometheus/node-exporter/drover.prom\"\n"),
        Path::new(SOURCE),
    )
    .unwrap();
    assert!(text.ends_with(&format!("{COLLECTORS}\n")), "{text}");
}

#[test]
fn the_defaults_give_what_the_shipped_unit_says() {
    assert_eq!(
        settings(""),
        [
            "[Service]",
            "ExecStartPre=",
            "ExecStartPre=+/usr/bin/mkdir -p -m 0755 /opt/app",
            "ReadWritePaths=",
            "ReadWritePaths=-/opt/app",
        ]
    );
    // The same lines as systemd/drover.service, so the drop-in for defaults changes nothing.
    let unit = include_str!("../../../systemd/drover.service");
    for line in [
        "ExecStartPre=+/usr/bin/mkdir -p -m 0755 /opt/app",
        "ReadWritePaths=-/opt/app",
        "StateDirectory=drover",
        "StateDirectoryMode=0700",
    ] {
        assert!(unit.lines().any(|l| l == line), "drover.service: {line}");
    }
    // The default environment file is in the state directory, which the unit opens.
    assert_eq!(
        settings("[environment]\npath = \"/app/env\"\n"),
        settings("")
    );
}

#[test]
fn another_root_and_state_dir_are_made_and_opened() {
    assert_eq!(
        settings(
            "[release]\nroot = \"/srv/app\"\n[agent]\nstate_dir = \"/srv/drover\"\n\
             [environment]\npath = \"/app/env\"\n"
        ),
        [
            "[Service]",
            "ExecStartPre=",
            "ExecStartPre=+/usr/bin/mkdir -p -m 0755 /srv/app",
            "ExecStartPre=+/usr/bin/mkdir -p -m 0700 /srv/drover",
            "StateDirectory=",
            "ReadWritePaths=",
            "ReadWritePaths=-/srv/app -/srv/drover",
        ]
    );
}

#[test]
fn the_environment_file_s_directory_is_opened_unless_it_is_already() {
    let env = |file: &str| {
        settings(&format!(
            "[environment]\npath = \"/e\"\nfile = \"{file}\"\n"
        ))
    };
    assert_eq!(
        env("/etc/app/app.env")[2..],
        [
            "ExecStartPre=+/usr/bin/mkdir -p -m 0755 /etc/app",
            "ExecStartPre=+/usr/bin/mkdir -p -m 0755 /opt/app",
            "ReadWritePaths=",
            "ReadWritePaths=-/etc/app -/opt/app",
        ]
    );
    // Inside the release root or the unit's state directory: made, already writable.
    for (file, dir) in [
        ("/opt/app/env/app.env", "/opt/app/env"),
        ("/var/lib/drover/env/app.env", "/var/lib/drover/env"),
    ] {
        assert_eq!(
            env(file)[3..],
            [
                format!("ExecStartPre=+/usr/bin/mkdir -p -m 0755 {dir}").as_str(),
                "ReadWritePaths=",
                "ReadWritePaths=-/opt/app",
            ]
        );
    }
    // A release root inside another state directory: the state directory is made first (else
    // `mkdir -p` would make it 0755) and is the one opened.
    assert_eq!(
        settings("[release]\nroot = \"/srv/d/app\"\n[agent]\nstate_dir = \"/srv/d\"\n")[2..],
        [
            "ExecStartPre=+/usr/bin/mkdir -p -m 0700 /srv/d",
            "ExecStartPre=+/usr/bin/mkdir -p -m 0755 /srv/d/app",
            "StateDirectory=",
            "ReadWritePaths=",
            "ReadWritePaths=-/srv/d"
        ]
    );
}

fn refusal(extra: &str) -> SandboxError {
    drop_in(&config(extra), Path::new(SOURCE)).unwrap_err()
}

#[test]
fn paths_systemd_would_read_otherwise_are_refused_naming_the_key() {
    for (extra, key, character) in [
        ("[release]\nroot = \"/srv/my app\"\n", "release.root", ' '),
        ("[release]\nroot = \"/srv/app\\tx\"\n", "release.root", '\t'),
        ("[release]\nroot = \"/srv/%i\"\n", "release.root", '%'),
        ("[release]\nroot = \"/srv/$HOME\"\n", "release.root", '$'),
        ("[release]\nroot = \"/srv/a\\\"b\"\n", "release.root", '"'),
        ("[release]\nroot = \"/srv/a'b\"\n", "release.root", '\''),
        ("[release]\nroot = \"/srv/a\\\\b\"\n", "release.root", '\\'),
        ("[release]\nroot = \"/srv/a;b\"\n", "release.root", ';'),
        ("[release]\nroot = \"/srv/café\"\n", "release.root", 'é'),
        (
            "[agent]\nstate_dir = \"/srv/a b\"\n",
            "agent.state_dir",
            ' ',
        ),
        (
            "[environment]\npath = \"/e\"\nfile = \"/etc/app/my app.env\"\n",
            "environment.file",
            ' ',
        ),
    ] {
        let e = refusal(extra);
        assert!(
            matches!(&e, SandboxError::Character { key: k, character: c, .. }
                if *k == key && *c == character),
            "{extra}: {e:?}"
        );
        assert!(e.to_string().starts_with(&format!("{key} ")), "{e}");
    }
    // Everything else a path may hold goes in as it is.
    let odd = "/srv/app-1.2_x+y@z:w,v=u~t";
    assert_eq!(
        settings(&format!("[release]\nroot = \"{odd}\"\n"))[4],
        format!("ReadWritePaths=-{odd}")
    );
}

#[test]
fn paths_the_sandbox_hides_or_that_would_open_it_are_refused() {
    for (extra, key, tree) in [
        ("[release]\nroot = \"/home/app\"\n", "release.root", "/home"),
        ("[release]\nroot = \"/root/app\"\n", "release.root", "/root"),
        ("[release]\nroot = \"/tmp/app\"\n", "release.root", "/tmp"),
        (
            "[agent]\nstate_dir = \"/var/tmp/d\"\n",
            "agent.state_dir",
            "/var/tmp",
        ),
        (
            "[agent]\nstate_dir = \"/run/user/0/d\"\n",
            "agent.state_dir",
            "/run/user",
        ),
        (
            "[environment]\npath = \"/e\"\nfile = \"/tmp/app.env\"\n",
            "environment.file",
            "/tmp",
        ),
    ] {
        let e = refusal(extra);
        assert!(
            matches!(&e, SandboxError::Hidden { key: k, tree: t, .. } if *k == key && *t == tree),
            "{extra}: {e:?}"
        );
    }
    for (extra, key, dir) in [
        ("[release]\nroot = \"/etc\"\n", "release.root", "/etc"),
        ("[release]\nroot = \"/usr\"\n", "release.root", "/usr"),
        (
            "[agent]\nstate_dir = \"/etc/drover\"\n",
            "agent.state_dir",
            "/etc/drover",
        ),
        (
            "[environment]\npath = \"/e\"\nfile = \"/etc/default/app\"\n",
            "environment.file",
            "/etc/default",
        ),
        (
            "[environment]\npath = \"/e\"\nfile = \"/etc/app.env\"\n",
            "environment.file",
            "/etc",
        ),
    ] {
        let e = refusal(extra);
        assert!(
            matches!(&e, SandboxError::Exposes { key: k, dir: d, .. }
                if *k == key && d == Path::new(dir)),
            "{extra}: {e:?}"
        );
    }
    // Under the agent's own config, units, credentials or binary: refused too.
    for (extra, dir) in [
        (
            "[agent]\nstate_dir = \"/etc/drover/state\"\n",
            "/etc/drover/state",
        ),
        (
            "[agent]\nstate_dir = \"/etc/systemd/system/drover.service.d\"\n",
            "/etc/systemd/system/drover.service.d",
        ),
        ("[release]\nroot = \"/usr/local/bin\"\n", "/usr/local/bin"),
    ] {
        let e = refusal(extra);
        assert!(
            matches!(&e, SandboxError::Exposes { dir: d, .. } if d == Path::new(dir)),
            "{extra}: {e:?}"
        );
    }
    // Beside them is fine.
    settings("[release]\nroot = \"/etc/app\"\n[agent]\nstate_dir = \"/usr/local/drover\"\n");
}

#[test]
fn a_path_that_is_not_normalized_is_refused() {
    // The config normalizes its paths; the renderer does not count on it.
    let mut c = config("");
    for path in [
        "/srv/app/",
        "/srv//app",
        "/srv/./app",
        "/srv/../app",
        "srv",
        "/",
    ] {
        c.release.root = PathBuf::from(path);
        assert_eq!(
            drop_in(&c, Path::new(SOURCE)),
            Err(SandboxError::NotNormalized {
                key: "release.root",
                path: PathBuf::from(path)
            })
        );
    }
}

#[test]
fn the_start_up_check_passes_where_the_directories_can_be_made() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("not/yet/app");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let c = config(&format!(
        "[release]\nroot = \"{}\"\n[agent]\nstate_dir = \"{}\"\n",
        root.display(),
        state.display()
    ));
    assert_eq!(check(&c), Ok(()));
    assert_eq!(check::nearest_existing(&root), dir.path());
}

#[test]
fn the_read_only_error_says_which_drop_in_to_write() {
    let e = SandboxError::ReadOnly {
        key: "release.root",
        path: PathBuf::from("/srv/app"),
        probe: PathBuf::from("/srv"),
    };
    let text = e.to_string();
    assert!(
        text.starts_with("release.root /srv/app: /srv is read-only"),
        "{text}"
    );
    assert!(text.contains(DROP_IN_PATH), "{text}");
    assert!(text.contains("drover sandbox-paths >"), "{text}");
}
