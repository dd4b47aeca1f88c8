//! Where events go: straight to journald (structured fields, SPEC priorities) when stderr is
//! connected to the journal, readable lines on stderr otherwise.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Whether stderr is the journal stream systemd gave us (`$JOURNAL_STREAM` names its device and
/// inode), which is how systemd says "log natively".
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

pub fn init(verbose: bool) {
    let level = if verbose {
        tracing::level_filters::LevelFilter::DEBUG
    } else {
        tracing::level_filters::LevelFilter::INFO
    };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("drover", level)
        .with_default(tracing::level_filters::LevelFilter::WARN);
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            use tracing_journald::{Priority, PriorityMappings};
            let layer = journald
                .with_field_prefix(None)
                .with_syslog_identifier("drover".into())
                .with_priority_mappings(PriorityMappings {
                    info: Priority::Informational,
                    debug: Priority::Debug,
                    ..PriorityMappings::new()
                });
            tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .init();
            return;
        }
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time();
    tracing_subscriber::registry().with(filter).with(fmt).init();
}
