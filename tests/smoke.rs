//! Smoke test of the whole harness with the real agent: a release published and promoted from
//! the host is deployed by the drover that cloud-init installed, and the app serves it.

use drover_tests::{wait_for, World};
use std::time::Duration;

#[test]
fn an_instance_deploys_the_promoted_release() {
    let world = World::new("deploys_promoted_release");
    world.release("1.0.0", true);
    let instance = world.boot_instance();

    let deployed = instance.wait_for_events("deployed", 1, Duration::from_secs(60));
    assert_eq!(deployed[0]["VERSION"], "1.0.0");
    let version = wait_for(Duration::from_secs(10), "the app to answer", || {
        instance.http_get("/version").ok()
    });
    assert_eq!(
        (version.status, version.text()),
        (200, "1.0.0\n".to_string())
    );
    assert_eq!(
        instance.current_release().as_deref(),
        Some(std::path::Path::new("releases/1.0.0"))
    );
    assert_eq!(instance.status_json()["current"], "1.0.0");
}
