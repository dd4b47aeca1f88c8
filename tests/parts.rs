//! The harness's other real parts on their own: moto answers the raw S3 and SSM calls the tests
//! make, with real parameter versions, and the sample app serves its version and health.

use drover_tests::{free_port, http, release, wait_for, Moto};
use std::process::{Child, Command};
use std::time::Duration;

#[test]
fn moto_keeps_objects_and_versions_parameters() {
    drover_tests::require_setup();
    let moto = Moto::shared();
    let bucket = format!("drover-{}-parts", std::process::id());
    moto.create_bucket(&bucket);

    moto.put_object(
        &bucket,
        "releases/1.0.0.tar.gz",
        b"\x1f\x8b not really gzip",
    );
    assert_eq!(
        moto.get_object(&bucket, "releases/1.0.0.tar.gz").as_deref(),
        Some(&b"\x1f\x8b not really gzip"[..])
    );
    assert_eq!(moto.get_object(&bucket, "releases/2.0.0.tar.gz"), None);

    let name = "/drover-test/parts/version";
    assert_eq!(moto.get_parameter(name), None);
    assert_eq!(moto.put_parameter(name, "1.0.0"), 1);
    // The same value again is a new deploy request: a new version.
    assert_eq!(moto.put_parameter(name, "1.0.0"), 2);
    assert_eq!(moto.get_parameter(name), Some(("1.0.0".to_string(), 2)));
}

/// The sample app, run on the host from a release directory; killed on drop.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sample_app_reports_its_version_and_health() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let dir = release::app_dir(tmp.path(), "3.1.4", true);
    let port = free_port();
    let _app = App(Command::new("/usr/bin/python3")
        .arg(dir.join("app.py"))
        .env("APP_PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the sample app: {e}")));

    let version = wait_for(Duration::from_secs(10), "the sample app to answer", || {
        http::get(port, "/version").ok()
    });
    assert_eq!(
        (version.status, version.text()),
        (200, "3.1.4\n".to_string())
    );
    let health = http::get(port, "/health").unwrap_or_else(|e| panic!("GET /health: {e}"));
    assert_eq!((health.status, health.text()), (200, "ok\n".to_string()));

    // A release that is deployable but unhealthy; the check is made on every request.
    std::fs::write(dir.join("UNHEALTHY"), "").unwrap_or_else(|e| panic!("write: {e}"));
    let health = http::get(port, "/health").unwrap_or_else(|e| panic!("GET /health: {e}"));
    assert_eq!(health.status, 500);

    let other = http::get(port, "/").unwrap_or_else(|e| panic!("GET /: {e}"));
    assert_eq!(other.status, 404);
}

#[test]
fn sample_app_answers_what_it_accepted_before_sigterm_then_exits() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let dir = release::app_dir(tmp.path(), "2.7.1", true);
    let port = free_port();
    let mut app = App(Command::new("/usr/bin/python3")
        .arg(dir.join("app.py"))
        .env("APP_PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the sample app: {e}")));
    wait_for(Duration::from_secs(10), "the sample app to answer", || {
        http::get(port, "/version").ok()
    });

    // A request in flight: connected, its head not finished. The app accepts in order, so once
    // a later request has been answered, this one has been accepted too.
    let mut in_flight = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect: {e}"));
    in_flight
        .write_all(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap_or_else(|e| panic!("write: {e}"));
    http::get(port, "/health").unwrap_or_else(|e| panic!("GET /health: {e}"));

    let kill = Command::new("kill")
        .args(["-TERM", &app.0.id().to_string()])
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
    assert!(kill.success());
    // It stops accepting...
    wait_for(Duration::from_secs(10), "the app to stop accepting", || {
        http::get(port, "/version").is_err().then_some(())
    });
    // ...yet answers the request it had accepted, and only then exits, cleanly.
    in_flight
        .write_all(b"Connection: close\r\n\r\n")
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut answer = String::new();
    in_flight
        .read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("read: {e}"));
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
    assert!(answer.ends_with("\r\n\r\n2.7.1\n"), "{answer}");
    let status = app.0.wait().unwrap_or_else(|e| panic!("wait: {e}"));
    assert!(status.success(), "the app exited with {status}");
}
