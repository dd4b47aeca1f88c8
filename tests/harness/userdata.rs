//! Renders the product's cloud-init user-data (`cloud-init/user-data.yaml.in`) for one instance:
//! where the drover binary comes from and its pinned digest, the agent's config, the repository's
//! `systemd/drover.service`, and any extra files (credentials, the app's unit).
//!
//! Template conventions: lines starting with `##` are notes for template readers and are dropped;
//! a marker alone on its line (`@DROVER_CONFIG@`) is a block, replaced by a text indented to the
//! marker's column; other markers are replaced inline by values checked to be safe in a quoted
//! YAML string.

/// The user-data template, as shipped.
pub const TEMPLATE: &str = include_str!("../../cloud-init/user-data.yaml.in");

/// The agent's unit, as shipped.
pub const DROVER_SERVICE: &str = include_str!("../../systemd/drover.service");

/// A file for cloud-init's `write_files`.
#[derive(Debug, Clone)]
pub struct WriteFile {
    /// Absolute path on the instance.
    pub path: String,
    /// Octal mode, e.g. `0o600`.
    pub mode: u32,
    pub content: String,
}

/// What one instance's user-data says.
#[derive(Debug, Clone)]
pub struct UserData {
    /// Where the binary comes from: an absolute path on the image.
    pub drover_source: String,
    /// The binary's SHA-256, lowercase hex; the install refuses anything else.
    pub drover_sha256: String,
    /// The text of `/etc/drover/config.toml`.
    pub config_toml: String,
    /// More files to write before drover is started.
    pub extra_files: Vec<WriteFile>,
}

impl UserData {
    /// The filled-in template: a `#cloud-config` document.
    pub fn render(&self) -> String {
        check_inline("DROVER_SOURCE", &self.drover_source);
        assert!(
            self.drover_source.starts_with('/'),
            "DROVER_SOURCE must be an absolute path on the image, not {:?}",
            self.drover_source
        );
        assert!(
            self.drover_sha256.len() == 64
                && self
                    .drover_sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "DROVER_SHA256 must be 64 lowercase hex digits, not {:?}",
            self.drover_sha256
        );
        let extra: String = self.extra_files.iter().map(write_file_entry).collect();
        let blocks = [
            ("DROVER_CONFIG", self.config_toml.as_str()),
            ("DROVER_SERVICE", DROVER_SERVICE),
            ("EXTRA_WRITE_FILES", extra.as_str()),
        ];
        let inline = [
            ("DROVER_SOURCE", self.drover_source.as_str()),
            ("DROVER_SHA256", self.drover_sha256.as_str()),
        ];
        fill(TEMPLATE, &blocks, &inline)
    }
}

/// Fills `template`: see the module comment. Panics on a marker it has no value for.
pub fn fill(template: &str, blocks: &[(&str, &str)], inline: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for line in template.lines() {
        if line.starts_with("##") {
            continue;
        }
        let indent = &line[..line.len() - line.trim_start().len()];
        let block = blocks
            .iter()
            .find(|(name, _)| line.trim() == format!("@{name}@"));
        match block {
            Some((name, text)) => out.push_str(&indent_block(name, text, indent)),
            None => {
                let mut filled = line.to_string();
                for (name, value) in inline {
                    filled = filled.replace(&format!("@{name}@"), value);
                }
                if let Some(marker) = leftover_marker(&filled) {
                    panic!("user-data template: no value for {marker} in line {line:?}");
                }
                out.push_str(&filled);
                out.push('\n');
            }
        }
    }
    out
}

/// `text` with every non-empty line prefixed by `indent`, ending in exactly one newline (what a
/// YAML literal block `|` gives back); empty text gives nothing.
fn indent_block(name: &str, text: &str, indent: &str) -> String {
    let text = text.trim_end_matches('\n');
    if text.is_empty() {
        return String::new();
    }
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(
        !first.starts_with([' ', '\t']),
        "{name}: a YAML literal block cannot start with an indented line: {first:?}"
    );
    let mut out = String::new();
    for line in text.lines() {
        if !line.is_empty() {
            out.push_str(indent);
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn write_file_entry(file: &WriteFile) -> String {
    check_inline("write_files path", &file.path);
    assert!(
        file.path.starts_with('/'),
        "write_files path must be absolute: {:?}",
        file.path
    );
    let mut entry = format!(
        "- path: \"{}\"\n  owner: root:root\n  permissions: '{:04o}'\n",
        file.path, file.mode
    );
    let content = indent_block(&file.path, &file.content, "    ");
    if content.is_empty() {
        entry.push_str("  content: \"\"\n");
    } else {
        entry.push_str("  content: |\n");
        entry.push_str(&content);
    }
    entry
}

fn check_inline(what: &str, value: &str) {
    assert!(
        !value.is_empty()
            && !value
                .chars()
                .any(|c| c.is_control() || c == '"' || c == '\\'),
        "{what} {value:?} cannot go into a quoted YAML string (empty, quote, backslash or control)"
    );
}

fn leftover_marker(line: &str) -> Option<&str> {
    let start = line.find('@')?;
    let rest = &line[start + 1..];
    let end = rest.find('@')?;
    let name = &rest[..end];
    let is_marker = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if is_marker {
        Some(&line[start..start + end + 2])
    } else {
        leftover_marker(&line[start + 1..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> UserData {
        UserData {
            drover_source: "/mnt/drover-dist/drover".into(),
            drover_sha256: "ab".repeat(32),
            config_toml: "[source]\nparameter = \"/x\"\n\n[aws]\nregion = \"us-east-1\"\n".into(),
            extra_files: vec![WriteFile {
                path: "/etc/default/drover".into(),
                mode: 0o600,
                content: "AWS_ACCESS_KEY_ID=testing\n".into(),
            }],
        }
    }

    #[test]
    fn fills_every_marker_and_drops_template_notes() {
        let text = sample().render();
        assert!(text.starts_with("#cloud-config\n"), "{text}");
        assert_eq!(leftover_marker(&text), None, "{text}");
        assert!(!text.contains("\n##"), "{text}");
        assert!(
            text.contains(&format!("\"{}\" ]", "ab".repeat(32))),
            "{text}"
        );
    }

    #[test]
    fn indents_blocks_to_the_marker_column() {
        let text = sample().render();
        assert!(
            text.contains(
                "    content: |\n      [source]\n      parameter = \"/x\"\n\n      [aws]\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("      ExecStart=/usr/local/bin/drover run\n"),
            "{text}"
        );
        assert!(
            text.contains("  - path: \"/etc/default/drover\"\n    owner: root:root\n    permissions: '0600'\n"),
            "{text}"
        );
    }

    #[test]
    #[should_panic(expected = "DROVER_SHA256")]
    fn refuses_a_digest_that_is_not_hex() {
        UserData {
            drover_sha256: "not-a-digest".into(),
            ..sample()
        }
        .render();
    }

    #[test]
    #[should_panic(expected = "no value for @NOPE@")]
    fn refuses_an_unknown_marker() {
        fill("a: @NOPE@\n", &[], &[]);
    }

    #[test]
    fn finds_markers_but_not_other_at_signs() {
        assert_eq!(leftover_marker("user@host and @X_1@"), Some("@X_1@"));
        assert_eq!(leftover_marker("getty@tty1.service"), None);
    }
}
