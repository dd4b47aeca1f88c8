//! The renderer against the template: markers, blocks, refusals, the generated config.

use super::*;

fn sample() -> UserData {
    UserData {
        binaries: vec![Pin::new(
            Arch::X86_64,
            "/mnt/drover-dist/drover",
            &"ab".repeat(32),
        )],
        config_toml: "[source]\nparameter = \"/x\"\n\n[artifact]\nbucket = \"b\"\n".into(),
        extra_files: vec![WriteFile {
            path: "/etc/default/drover".into(),
            mode: 0o600,
            content: "AWS_ACCESS_KEY_ID=testing\n".into(),
        }],
        ..UserData::default()
    }
}

fn render(data: &UserData) -> String {
    match data.render() {
        Ok(text) => text,
        Err(e) => panic!("render: {e}"),
    }
}

#[test]
fn fills_every_marker_and_drops_template_notes() {
    let text = render(&sample());
    assert!(text.starts_with("#cloud-config\n"), "{text}");
    assert_eq!(next_marker(&text), None, "{text}");
    assert!(!text.contains("\n##"), "{text}");
    assert!(
        text.ends_with(&format!(
            "runcmd:\n  - - /usr/local/lib/drover/install-drover\n    - \"x86_64\"\n    \
             - \"/mnt/drover-dist/drover\"\n    - \"{}\"\n    - \"--\"\n",
            "ab".repeat(32)
        )),
        "{text}"
    );
}

#[test]
fn indents_blocks_to_the_marker_column() {
    let text = render(&sample());
    assert!(
        text.contains(
            "    content: |\n      [source]\n      parameter = \"/x\"\n\n      [artifact]\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("      ExecStart=/usr/local/bin/drover run\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "  - path: \"/etc/default/drover\"\n    owner: root:root\n    permissions: '0600'\n"
        ),
        "{text}"
    );
}

#[test]
fn writes_the_sandbox_drop_in_for_the_config_s_paths() {
    let entry = |text: &str| {
        let head = format!(
            "  - path: {}\n    owner: root:root\n    permissions: '0644'\n    content: |\n",
            crate::sandbox::DROP_IN_PATH
        );
        let start = text.find(&head).unwrap_or_else(|| panic!("{text}")) + head.len();
        let body = &text[start..];
        let end = body.find("\n  - path:").unwrap_or(body.len());
        body[..end + 1]
            .lines()
            .map(|l| l.trim_start())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let text = render(&sample());
    assert!(
        entry(&text).ends_with("ExecStartPre=+/usr/bin/mkdir -p -m 0755 /opt/app\nReadWritePaths=\nReadWritePaths=-/opt/app\nReadWritePaths=-/var/lib/node_exporter/textfile_collector -/var/lib/prometheus/node-exporter"),
        "{text}"
    );
    let data = UserData {
        config_toml: "[artifact]\nbucket = \"b\"\n[release]\nroot = \"/srv/app\"\n".into(),
        ..sample()
    };
    let text = render(&data);
    assert!(
        entry(&text).contains("/etc/drover/config.toml")
            && entry(&text)
                .ends_with("mkdir -p -m 0755 /srv/app\nReadWritePaths=\nReadWritePaths=-/srv/app\nReadWritePaths=-/var/lib/node_exporter/textfile_collector -/var/lib/prometheus/node-exporter"),
        "{text}"
    );
    // A config that does not load, or whose paths cannot go into the drop-in, renders nothing.
    let broken = UserData {
        config_toml: "[release]\nroot = \"/srv/app\"\n".into(),
        ..sample()
    };
    assert!(
        matches!(broken.render(), Err(UserDataError::InstanceConfig(e)) if e.contains("artifact")),
    );
    let spaced = UserData {
        config_toml: "[artifact]\nbucket = \"b\"\n[release]\nroot = \"/srv/my app\"\n".into(),
        ..sample()
    };
    assert!(matches!(
        spaced.render(),
        Err(UserDataError::Sandbox(
            crate::sandbox::SandboxError::Character {
                key: "release.root",
                ..
            }
        ))
    ));
}

#[test]
fn enables_units_as_arguments_of_the_install_script() {
    let data = UserData {
        enable_units: vec!["app.service".into(), "worker@1.service".into()],
        ..sample()
    };
    let text = render(&data);
    assert!(
        text.ends_with("\"\n    - \"app.service\"\n    - \"worker@1.service\"\n"),
        "{text}"
    );
    let bad = UserData {
        enable_units: vec!["app; reboot".into()],
        ..sample()
    };
    assert_eq!(
        bad.render(),
        Err(UserDataError::UnitName("app; reboot".into()))
    );
}

#[test]
fn writes_the_download_ca_where_the_script_looks() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let data = UserData {
        binaries: vec![Pin::new(
            Arch::X86_64,
            "https://example.com/drover",
            &"ab".repeat(32),
        )],
        download_ca: Some(pem.into()),
        ..sample()
    };
    let text = render(&data);
    assert!(
        text.contains(&format!(
            "  - path: \"{DOWNLOAD_CA_PATH}\"\n    owner: root:root\n    permissions: '0644'\n    content: |\n      -----BEGIN CERTIFICATE-----\n"
        )),
        "{text}"
    );
    assert!(text.contains("ca=/etc/drover/download-ca.pem\n"), "{text}");
    let not_pem = UserData {
        download_ca: Some("hello".into()),
        ..data
    };
    assert_eq!(not_pem.render(), Err(UserDataError::NotPem));
}

#[test]
fn accepts_https_urls_and_absolute_paths_only() {
    for good in [
        "https://example.com/drover",
        "https://example.com:8443/a/b/drover-1.0?x-id=GetObject&sig=abc%2F",
        "/mnt/dist/drover",
    ] {
        assert_eq!(check_source(good), Ok(()), "{good}");
    }
    for bad in [
        "http://example.com/drover",
        "HTTP://example.com/drover",
        "ftp://example.com/drover",
        "s3://bucket/drover",
        "drover",
        "https://",
        "https:///drover",
        "https://example.com/a b",
        "https://example.com/\"",
        "",
    ] {
        assert!(check_source(bad).is_err(), "{bad} accepted");
    }
    let http = UserData {
        binaries: vec![Pin::new(
            Arch::X86_64,
            "http://example.com/drover",
            &"ab".repeat(32),
        )],
        ..sample()
    };
    let err = http
        .render()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("plain http is refused"), "{err}");
}

#[test]
fn refuses_a_digest_that_is_not_lowercase_hex() {
    for digest in ["not-a-digest".to_string(), "AB".repeat(32), "ab".repeat(31)] {
        let data = UserData {
            binaries: vec![Pin::new(Arch::Aarch64, "/x", &digest)],
            ..sample()
        };
        assert_eq!(data.render(), Err(UserDataError::Sha256(digest)));
    }
}

#[test]
fn refuses_an_unknown_marker() {
    let err = fill("a: @NOPE@\n", &[], &[]);
    assert!(
        matches!(&err, Err(UserDataError::UnknownMarker { marker, .. }) if marker == "@NOPE@"),
        "{err:?}"
    );
}

#[test]
fn values_are_not_searched_for_markers() {
    let filled = fill("x: \"@A@ @B@\"\n", &[], &[("A", "@B@"), ("B", "b@c")]);
    assert_eq!(filled, Ok("x: \"@B@ b@c\"\n".into()));
}

#[test]
fn finds_markers_but_not_other_at_signs() {
    assert_eq!(
        next_marker("user@host and @X_1@!"),
        Some(("user@host and ", "@X_1@", "!"))
    );
    assert_eq!(next_marker("getty@tty1.service"), None);
    assert_eq!(next_marker("a@b@"), None);
}

#[test]
fn a_block_that_starts_indented_is_refused() {
    assert_eq!(
        indent_block("X", "  indented\n", "    "),
        Err(UserDataError::IndentedBlock("X".into()))
    );
    assert_eq!(indent_block("X", "\n\n", "    "), Ok(String::new()));
}

#[test]
fn generated_config_has_the_spec_defaults_and_parses() {
    let flags = ConfigFlags {
        bucket: "my-releases".into(),
        ..ConfigFlags::default()
    };
    let text = flags.to_toml().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        text,
        "[source]\nparameter = \"/app/current-version\"\n\n[artifact]\nbucket = \"my-releases\"\n\
         key = \"releases/{version}.tar.gz\"\n\n[service]\nunits = [\"app.service\"]\n"
    );
    let config = Config::parse(&text, Path::new("t")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.health.url, None);
}

#[test]
fn generated_config_says_every_flag_quoted() {
    let flags = ConfigFlags {
        bucket: "b".into(),
        parameter: Some("/team \"x\"/version".into()),
        key: Some("apps/{version}/app.tgz".into()),
        units: Some(vec!["a.service".into(), "b.service".into()]),
        health_url: Some("http://127.0.0.1:9000/ready".into()),
    };
    let text = flags.to_toml().unwrap_or_else(|e| panic!("{e}"));
    let config = Config::parse(&text, Path::new("t")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.source.parameter, "/team \"x\"/version");
    assert_eq!(config.artifact.bucket, "b");
    assert_eq!(config.artifact.key, "apps/{version}/app.tgz");
    assert_eq!(config.service.units, ["a.service", "b.service"]);
    assert_eq!(
        config.health.url.as_deref(),
        Some("http://127.0.0.1:9000/ready")
    );
    let empty = ConfigFlags {
        units: Some(vec![]),
        ..flags
    };
    let text = empty.to_toml().unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("units = []\n"), "{text}");
}

#[test]
fn generated_config_refuses_what_the_agent_would() {
    let flags = ConfigFlags {
        bucket: "b".into(),
        key: Some("releases/latest.tar.gz".into()),
        ..ConfigFlags::default()
    };
    let err = flags
        .to_toml()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("artifact.key"), "{err}");
}

#[test]
fn unit_files_go_to_etc_systemd_system() {
    assert_eq!(
        unit_file("app.service", "[Service]\n".into()),
        Ok(WriteFile {
            path: "/etc/systemd/system/app.service".into(),
            mode: 0o644,
            content: "[Service]\n".into(),
        })
    );
    assert!(unit_file("../app.service", String::new()).is_err());
}
