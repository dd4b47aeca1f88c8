//! `[metrics] textfile` through the real parts: `drover doctor` on the host checks the collector's
//! directory.

use drover_tests::World;

/// `drover doctor` with `[metrics]`: a collector directory that is missing fails with the fix;
/// one the shipped unit does not let drover write to is a note naming the drop-in.
#[test]
fn doctor_checks_the_collector_directory() {
    use drover_tests::host::{stdout, Host};
    let world = World::new("metrics-doctor");
    let endpoint = world.moto.endpoint();
    let collector = world.dir().join("collector");
    let extra = format!(
        "[metrics]\ntextfile = \"{}/drover.prom\"\n",
        collector.display()
    );
    let host = Host::with_config(world, &endpoint, &extra);
    let out = host.drover(&["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = format!(
        "FAIL  metrics {}/drover.prom: {}",
        collector.display(),
        collector.display()
    );
    assert!(text.contains(&line), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");
    assert!(
        text.contains("fix: set up node_exporter's textfile collector"),
        "{text}"
    );

    std::fs::create_dir(&collector).unwrap();
    let out = host.drover(&["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "note  metrics {}/drover.prom",
            collector.display()
        )) && text.contains(&format!("ReadWritePaths=-{}\n", collector.display())),
        "{text}"
    );
}
