//! Prometheus' text exposition format, as much of it as the metrics need: families with their
//! `# HELP` and `# TYPE` lines, samples with escaped label values, and values spelled as the
//! format (Go's parser) reads them.

use std::fmt::Write as _;

/// The text being written; the name of the family being written, for its samples.
#[derive(Default)]
pub(super) struct Text(pub(super) String, &'static str);

impl Text {
    pub(super) fn family(&mut self, name: &'static str, kind: &str, help: &str) {
        debug_assert!(!help.contains(['\\', '\n']), "{name}'s help needs escaping");
        let _ = write!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        self.1 = name;
    }

    pub(super) fn counter(&mut self, name: &'static str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(&[], value);
    }

    pub(super) fn sample(&mut self, labels: &[(&str, &str)], value: impl Value) {
        self.0.push_str(self.1);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{name}=\"");
                escape_label_value(&mut self.0, value);
                self.0.push('"');
            }
            self.0.push('}');
        }
        self.0.push(' ');
        value.write(&mut self.0);
        self.0.push('\n');
    }
}

/// A sample's value as the format writes it.
pub(super) trait Value {
    fn write(&self, out: &mut String);
}

impl Value for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for i32 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    /// Go's spellings for the values Rust writes otherwise; finite ones in plain decimal.
    fn write(&self, out: &mut String) {
        let _ = match *self {
            v if v.is_nan() => write!(out, "NaN"),
            v if v == f64::INFINITY => write!(out, "+Inf"),
            v if v == f64::NEG_INFINITY => write!(out, "-Inf"),
            v => write!(out, "{v}"),
        };
    }
}

/// A label value as the format wants it between double quotes: `\`, `"` and line feeds escaped.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_as_the_format_spells_them() {
        let spelled = |v: f64| {
            let mut out = String::new();
            v.write(&mut out);
            out
        };
        assert_eq!(spelled(f64::NAN), "NaN");
        assert_eq!(spelled(f64::INFINITY), "+Inf");
        assert_eq!(spelled(f64::NEG_INFINITY), "-Inf");
        assert_eq!(spelled(0.000_000_1), "0.0000001");
        assert_eq!(spelled(2.0), "2");
        assert_eq!(spelled(1e21), "1000000000000000000000");
    }
}
