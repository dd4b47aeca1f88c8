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

/// An error that ends the command, before or after the agent's loop: a line on stderr for a
/// terminal, an event with `EVENT=start_failed` and `ERROR` for the journal, where every entry
/// of drover's carries an `EVENT`.
pub fn fatal(message: &str) {
    if stderr_is_journal() {
        crate::events::emit(
            crate::events::Event::StartFailed,
            &crate::events::Fields {
                error: Some(message),
                ..crate::events::Fields::default()
            },
            &format!("drover stopped: {message}"),
        );
    } else {
        eprintln!("drover: {message}");
    }
}

pub fn init(verbose: bool) {
    let level = if verbose {
        tracing::level_filters::LevelFilter::DEBUG
    } else {
        tracing::level_filters::LevelFilter::INFO
    };
    // Only drover's own events, which each carry an EVENT and fields: the SDK's warnings are
    // Rust debug dumps (a failed credential source, a retry), and what they are about reaches
    // the operator as drover's error for the call. `--verbose` shows them.
    let others = if verbose {
        tracing::level_filters::LevelFilter::WARN
    } else {
        tracing::level_filters::LevelFilter::OFF
    };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("drover", level)
        .with_default(others);
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
    let to_stderr = |text: &str| {
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), text.as_bytes());
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(Lines(to_stderr))
        .init();
}

/// Events as readable lines, `LEVEL message key=value ...`, each handed whole to the function
/// (stderr's writer): what tracing-subscriber's `fmt` layer writes without time and target, in a
/// twentieth of its code (the binary is downloaded by every instance at boot).
struct Lines<W>(W);

impl<S: tracing::Subscriber, W: Fn(&str) + 'static> tracing_subscriber::Layer<S> for Lines<W> {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        (self.0)(&format!(
            "{:>5} {}{}\n",
            event.metadata().level(),
            line.message,
            line.fields
        ));
    }
}

/// One event's message, and its other fields as ` name=value` (strings quoted).
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl tracing::field::Visit for Line {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            _ => self.record_debug(field, &value),
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = match field.name() {
            "message" => write!(self.message, "{value:?}"),
            name => write!(self.fields, " {name}={value:?}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn lines_are_level_message_and_fields_as_fmt_wrote_them() {
        let lines = Arc::new(Mutex::new(String::new()));
        let sink = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(Lines(move |text: &str| sink.lock().unwrap().push_str(text)));
        tracing::subscriber::with_default(subscriber, || {
            let error = "cannot \"read\"";
            tracing::error!(
                event = "poll_failed",
                parameter_version = 3_i64,
                error,
                "Reading {} failed",
                "it"
            );
            tracing::info!(position = 0.5_f64, "plain");
        });
        assert_eq!(
            *lines.lock().unwrap(),
            "ERROR Reading it failed event=\"poll_failed\" parameter_version=3 \
             error=\"cannot \\\"read\\\"\"\n INFO plain position=0.5\n"
        );
    }
}
