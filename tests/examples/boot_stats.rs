//! Measures the harness's real parts: how long moto takes to answer, how long an instance takes
//! to boot through cloud-init, how much memory it holds, and how long it takes to halt.
//! `cargo run -p drover-tests --example boot_stats [BOOTS]` (as root, after setup.sh).

use drover_tests::{Moto, World};
use std::time::Instant;

fn main() {
    let boots: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let started = Instant::now();
    let moto = Moto::shared();
    println!(
        "moto on port {} answered after {:.2?}",
        moto.port(),
        started.elapsed()
    );
    let world = World::new("boot_stats");
    let spec = world.boot_spec();
    println!(
        "binary {} (pinned {})",
        spec.binary.display(),
        spec.pinned_sha256
    );
    for _ in 0..boots {
        let started = Instant::now();
        let instance = world.boot(spec.clone());
        let booted = started.elapsed();
        instance.exec_ok(&["cloud-init", "status", "--wait"]);
        let cloud_init = started.elapsed();
        let pss = instance.container.pss_kib();
        if std::env::var_os("BOOT_STATS_BLAME").is_some() {
            println!("{}", instance.exec_ok(&["systemd-analyze"]));
            println!("{}", instance.exec_ok(&["systemd-analyze", "blame"]));
            println!(
                "{}",
                instance.exec_ok(&["systemd-analyze", "critical-chain"])
            );
        }
        let upper = instance.exec_ok(&["df", "--output=used", "-k", "/"]);
        let name = instance.container.name().to_string();
        let halting = Instant::now();
        drop(instance);
        println!(
            "{name}: running after {booted:.2?}, cloud-init done after {cloud_init:.2?}, \
             PSS {} MiB, overlay upper {} MiB, halted in {:.2?}",
            pss / 1024,
            upper
                .lines()
                .nth(1)
                .and_then(|k| k.trim().parse::<u64>().ok())
                .unwrap_or(0)
                / 1024,
            halting.elapsed()
        );
    }
}
