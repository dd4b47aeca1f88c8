//! drover's D-Bus client against the real systemd of a booted instance, driven from the host
//! through the container's bus socket (`DBUS_SYSTEM_BUS_ADDRESS`), as TESTBED.md describes.
//! The test sets the process's bus address, which every process another test started would
//! inherit: it has the machine alone, and takes the address back when done.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use drover::service::{ServiceManager, UnitError};
use drover::systemd::Systemd;
use drover_tests::World;
use std::time::Duration;

fn install_unit(instance: &drover_tests::Instance, name: &str, body: &str) {
    let path = format!("/etc/systemd/system/{name}");
    std::fs::write(instance.path(&path), body).expect("write unit");
    instance.exec_ok(&["systemctl", "daemon-reload"]);
}

#[test]
fn restart_jobs_and_failed_state_through_the_real_bus() {
    let _alone = drover_tests::alone();
    let world = World::new("systemd");
    let instance = world.boot_instance();
    install_unit(
        &instance,
        "sleeper.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    );
    install_unit(
        &instance,
        "broken.service",
        "[Service]\nType=oneshot\nExecStart=/bin/false\n",
    );
    install_unit(
        &instance,
        "crasher.service",
        "[Service]\nExecStart=/bin/sh -c 'sleep 0.3; exit 3'\n",
    );
    let _bus = unsafe_set_bus(&instance);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let systemd = Systemd::new(Duration::from_secs(30));

        // Regression: the second restart from one connection failed with
        // org.freedesktop.systemd1.AlreadySubscribed.
        for _ in 0..3 {
            systemd.restart("sleeper.service").await.expect("restart");
        }
        assert_eq!(
            instance.unit_property("sleeper.service", "ActiveState"),
            "active"
        );
        assert!(!systemd.is_failed("sleeper.service").await.expect("state"));

        match systemd.restart("broken.service").await {
            Err(UnitError::JobFailed { unit, result, .. }) => {
                assert_eq!(
                    (unit.as_str(), result.as_str()),
                    ("broken.service", "failed")
                );
            }
            other => panic!("expected a failed job, got {other:?}"),
        }
        assert!(systemd.is_failed("broken.service").await.expect("state"));

        // Started fine, fails later: the health gate sees it through is_failed.
        systemd.restart("crasher.service").await.expect("restart");
        let mut failed = false;
        for _ in 0..50 {
            if systemd.is_failed("crasher.service").await.expect("state") {
                failed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(failed, "crasher.service never entered failed");

        match systemd.restart("no-such.service").await {
            Err(UnitError::Bus { unit, message }) => {
                assert_eq!(unit, "no-such.service");
                assert!(
                    message.contains("NoSuchUnit") || message.contains("not found"),
                    "{message}"
                );
            }
            other => panic!("expected a bus error, got {other:?}"),
        }
    });
}

/// `DBUS_SYSTEM_BUS_ADDRESS` for this process while the value lives.
struct BusAddress;

/// Sets the bus address. Safe only while no other thread reads the environment: the caller has
/// the machine alone, and no runtime has started yet.
fn unsafe_set_bus(instance: &drover_tests::Instance) -> BusAddress {
    let address = format!("unix:path={}", instance.container.bus_socket().display());
    #[allow(unsafe_code)]
    // SAFETY: the test holds `alone()`: the only other tests that may run make no world and
    // read the environment only through std, which locks it. Its runtime is not started yet.
    unsafe {
        std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", address)
    };
    BusAddress
}

impl Drop for BusAddress {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: as for setting it; the runtime has been dropped before this value.
        unsafe {
            std::env::remove_var("DBUS_SYSTEM_BUS_ADDRESS")
        };
    }
}
