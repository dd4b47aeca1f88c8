//! drover's integration tests, one module per area, in one test binary (as ripgrep's
//! `tests/tests.rs`): each separate binary linked the AWS SDK again, and ran after the one before
//! it, each with a moto of its own. The areas stay in their files beside this one; each module
//! says what it is for. Run one area, or one test, by its path:
//!
//! ```text
//! cargo test -p drover-tests --test integration -- units::
//! cargo test -p drover-tests --test integration -- --exact adversarial::setuid_and_setgid_bits_are_dropped_not_rejected
//! ```
//!
//! All tests of every area share one process, one moto and the machine, two at a time unless
//! `RUST_TEST_THREADS` (or `--test-threads`) says otherwise. Each test keeps to its own world
//! (`drover_tests::World`: bucket, parameter, ports, temp dir, containers); a test that cannot
//! share the machine takes it alone first (`drover_tests::alone`).

mod adversarial;
mod appside;
mod autoscaling;
mod cli;
mod cloudinit;
mod container;
mod crash;
mod disk;
mod downloads;
mod e2e;
mod faults;
mod fleet;
mod graviton;
mod history;
mod loadbalancer;
mod metrics;
mod operator;
mod packages;
mod parts;
mod sandbox;
mod signing;
mod smoke;
mod static_binary;
mod systemd;
mod throttle;
mod units;
mod zerodowntime;
