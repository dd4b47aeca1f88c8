//! `[environment]`: the app's settings and secrets, read from the SSM parameters under a path
//! (String, StringList and SecureString, decrypted) and written as the EnvironmentFile its units
//! read.
//!
//! `/app/env/DATABASE_URL` becomes `DATABASE_URL="…"`; only the path's direct children count, and
//! a name that is not a shell variable name is left out with a warning that names it, as is a
//! name the dynamic loader, libc or a shell acts on before any code of the app or a hook runs
//! ([`loader_or_shell_variable`]): from here on, those names reach neither the file nor a hook. The file is
//! replaced atomically with mode 0600. Values never leave this module except into that file and a
//! hook's environment: what drover logs and remembers is the names and each parameter's
//! `Version`, whose [`fingerprint`] tells a change without holding any value.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::fsutil::{self, PathError};

/// One parameter under the path, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathParameter {
    /// The full name, `/app/env/DATABASE_URL`.
    pub name: String,
    pub value: String,
    pub version: i64,
}

/// One variable of the file.
#[derive(Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub value: String,
    pub version: i64,
}

/// Never prints the value.
impl std::fmt::Debug for Variable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// The variables of one read, sorted by name, and the parameters that could not be variables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub variables: Vec<Variable>,
    /// Full names of parameters left out, each with the reason.
    pub skipped: Vec<(String, &'static str)>,
    /// Variable names left out because the loader, libc or a shell would act on them, sorted.
    pub refused: Vec<String>,
}

impl Settings {
    /// Turns the parameters under `path` into variables.
    pub fn from_parameters(path: &str, parameters: Vec<PathParameter>) -> Self {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let mut settings = Settings::default();
        for p in parameters {
            let Some(name) = p.name.strip_prefix(&prefix) else {
                settings.skipped.push((p.name, "not under the path"));
                continue;
            };
            if name.contains('/') {
                settings
                    .skipped
                    .push((p.name, "not a direct child of the path"));
            } else if !is_variable_name(name) {
                settings
                    .skipped
                    .push((p.name, "not a variable name ([A-Za-z_][A-Za-z0-9_]*)"));
            } else if loader_or_shell_variable(name).is_some() {
                settings.refused.push(name.to_owned());
            } else {
                settings.variables.push(Variable {
                    name: name.to_owned(),
                    value: p.value,
                    version: p.version,
                });
            }
        }
        settings.variables.sort_by(|a, b| a.name.cmp(&b.name));
        settings.refused.sort();
        settings
    }

    /// Names and parameter versions, hashed: changes when any value changes (SSM bumps a
    /// parameter's version on every put) or a variable comes or goes, and holds no value.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        for v in &self.variables {
            hasher.update(format!("{}@{}\n", v.name, v.version).as_bytes());
        }
        let digest = hasher.finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// What the state remembers of these settings: `NAME@version`, without values.
    pub fn remembered(&self) -> Vec<String> {
        self.variables
            .iter()
            .map(|v| format!("{}@{}", v.name, v.version))
            .collect()
    }

    /// The settings back from [`Settings::remembered`], with empty values.
    pub fn from_names(entries: &[String]) -> Self {
        let variables = entries
            .iter()
            .filter_map(|e| e.rsplit_once('@'))
            .map(|(name, version)| Variable {
                name: name.to_owned(),
                value: String::new(),
                version: version.parse().unwrap_or(0),
            })
            .collect();
        Settings {
            variables,
            ..Settings::default()
        }
    }

    pub fn names(&self) -> Vec<&str> {
        self.variables.iter().map(|v| v.name.as_str()).collect()
    }

    /// `(name, value)` pairs, for a hook's environment.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.variables
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect()
    }

    /// The EnvironmentFile text: `NAME="value"` lines, in systemd's quoting (backslash before
    /// `"`, `\`, `` ` `` and `$`; a newline inside the quotes is kept).
    pub fn render(&self) -> String {
        let mut out = String::from("# Written by drover from SSM; do not edit.\n");
        for v in &self.variables {
            out.push_str(&v.name);
            out.push_str("=\"");
            for c in v.value.chars() {
                if matches!(c, '"' | '\\' | '`' | '$') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push_str("\"\n");
        }
        out
    }
}

/// Names that steer a process before its own code runs, or steer the shell a hook (or an
/// `ExecStart=` through `sh -c`) is written in: the dynamic loader's, libc's that glibc ignores in
/// setuid programs (its `unsecvars.h`, secure mode), and those bash and dash read at startup or
/// act on while running a script. A setting with one of these names could make a hook or the
/// app's units, some of which may run as root, load or run code that is not the release's, or
/// run the release's code differently from how it was written. `None`: the name is an ordinary
/// setting.
///
/// Deliberately not here: `TMPDIR` (in `unsecvars.h`, but an ordinary app setting, and the
/// sandbox gives drover a private `/tmp`), the `MALLOC_*` tuning knobs (`MALLOC_ARENA_MAX` is
/// common app tuning; only `MALLOC_TRACE`, which writes a file, is refused) and language
/// runtimes' variables (`PYTHONPATH`, `NODE_OPTIONS`, `JAVA_TOOL_OPTIONS`): they are the app's own
/// configuration, and a hook in that language runs as the app does. `BASH_FUNC_*%%` needs a `%`,
/// which no variable name here has.
pub fn loader_or_shell_variable(name: &str) -> Option<&'static str> {
    const LIBC: &[&str] = &[
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "MALLOC_TRACE",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TZDIR",
    ];
    const SHELL: &[&str] = &[
        "BASH_ENV",
        "BASHOPTS",
        "BASH_LOADABLES_PATH",
        "BASH_XTRACEFD",
        "CDPATH",
        "ENV",
        "EXECIGNORE",
        "GLOBIGNORE",
        "IFS",
        "PS4",
        "SHELLOPTS",
    ];
    if name.starts_with("LD_") {
        Some("read by the dynamic loader")
    } else if LIBC.contains(&name) {
        Some("read by the C library")
    } else if SHELL.contains(&name) {
        Some("read by the shell")
    } else {
        None
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 255
}

/// Replaces `file` (the environment file or its good copy) with `bytes` atomically, mode 0600,
/// flushed.
pub fn write(file: &Path, bytes: &[u8]) -> Result<(), PathError> {
    fsutil::write_atomic(file, bytes, 0o600)
}

/// The names that differ between two reads: added, removed or given a new version.
pub fn changed_names(old: &Settings, new: &Settings) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for v in &new.variables {
        if !(old.variables.iter()).any(|o| o.name == v.name && o.version == v.version) {
            names.push(v.name.clone());
        }
    }
    for v in &old.variables {
        if !new.variables.iter().any(|n| n.name == v.name) {
            names.push(v.name.clone());
        }
    }
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, value: &str, version: i64) -> PathParameter {
        PathParameter {
            name: name.into(),
            value: value.into(),
            version,
        }
    }

    #[test]
    fn direct_children_with_variable_names_become_variables() {
        let s = Settings::from_parameters(
            "/app/env",
            vec![
                p("/app/env/PORT", "8080", 1),
                p("/app/env/DATABASE_URL", "postgres://x", 3),
                p("/app/env/nested/KEY", "v", 1),
                p("/app/env/bad-name", "v", 1),
                p("/app/envy/X", "v", 1),
            ],
        );
        assert_eq!(s.names(), ["DATABASE_URL", "PORT"]);
        let skipped: Vec<_> = s.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            skipped,
            ["/app/env/nested/KEY", "/app/env/bad-name", "/app/envy/X"]
        );
    }

    #[test]
    fn names_the_loader_libc_or_a_shell_act_on_are_refused_for_the_file_and_hooks() {
        let s = Settings::from_parameters(
            "/app/env",
            vec![
                p("/app/env/LD_PRELOAD", "/opt/app/current/evil.so", 1),
                p("/app/env/PATH", "/opt/app/current/bin:/usr/bin", 1),
                p("/app/env/BASH_ENV", "/opt/app/current/rc", 2),
                p("/app/env/GREETING", "hello", 1),
                p("/app/env/IFS", "/", 1),
                p("/app/env/LD_LIBRARY_PATH", "/x", 1),
                p("/app/env/MALLOC_ARENA_MAX", "2", 1),
            ],
        );
        assert_eq!(
            s.refused,
            ["BASH_ENV", "IFS", "LD_LIBRARY_PATH", "LD_PRELOAD"]
        );
        // PATH is the app's to set; a hook gets drover's own (crate::hooks).
        assert_eq!(s.names(), ["GREETING", "MALLOC_ARENA_MAX", "PATH"]);
        assert!(s.skipped.is_empty());
        let file = s.render();
        assert!(!file.contains("LD_") && !file.contains("BASH_ENV") && !file.contains("IFS"));
        let hook: Vec<String> = s.pairs().into_iter().map(|(k, _)| k).collect();
        assert_eq!(hook, ["GREETING", "MALLOC_ARENA_MAX", "PATH"]);
        // Refused names are not part of what is remembered, so they trigger no restart.
        assert_eq!(
            s.remembered(),
            ["GREETING@1", "MALLOC_ARENA_MAX@1", "PATH@1"]
        );
    }

    #[test]
    fn the_refused_list_is_deliberate() {
        for name in [
            "LD_PRELOAD",
            "LD_AUDIT",
            "LD_DEBUG_OUTPUT",
            "LD_ANYTHING_NEW",
            "GCONV_PATH",
            "GLIBC_TUNABLES",
            "NLSPATH",
            "MALLOC_TRACE",
            "RES_OPTIONS",
            "TZDIR",
            "BASH_ENV",
            "ENV",
            "SHELLOPTS",
            "BASHOPTS",
            "PS4",
            "IFS",
            "CDPATH",
            "GLOBIGNORE",
            "EXECIGNORE",
        ] {
            assert!(
                loader_or_shell_variable(name).is_some(),
                "{name} is allowed"
            );
        }
        for name in [
            "PATH",
            "TMPDIR",
            "TZ",
            "LANG",
            "HOME",
            "MALLOC_ARENA_MAX",
            "PYTHONPATH",
            "NODE_OPTIONS",
            "OLD_PRELOAD",
            "ld_preload",
            "ENVIRONMENT",
            "BASH_ENVIRONMENT",
            "DATABASE_URL",
        ] {
            assert_eq!(loader_or_shell_variable(name), None, "{name} is refused");
        }
        assert_eq!(
            loader_or_shell_variable("LD_PRELOAD"),
            Some("read by the dynamic loader")
        );
        assert_eq!(loader_or_shell_variable("IFS"), Some("read by the shell"));
        assert_eq!(
            loader_or_shell_variable("GCONV_PATH"),
            Some("read by the C library")
        );
    }

    #[test]
    fn rendering_quotes_what_systemd_would_expand() {
        let s = Settings::from_parameters(
            "/e",
            vec![
                p("/e/A", r#"say "hi" $HOME `x` \n"#, 1),
                p("/e/B", "two\nlines", 1),
            ],
        );
        assert_eq!(
            s.render(),
            "# Written by drover from SSM; do not edit.\n\
             A=\"say \\\"hi\\\" \\$HOME \\`x\\` \\\\n\"\n\
             B=\"two\nlines\"\n"
        );
    }

    #[test]
    fn fingerprint_follows_versions_not_values_and_debug_hides_values() {
        let a = Settings::from_parameters("/e", vec![p("/e/SECRET", "hunter2", 1)]);
        let b = Settings::from_parameters("/e", vec![p("/e/SECRET", "other", 1)]);
        let c = Settings::from_parameters("/e", vec![p("/e/SECRET", "other", 2)]);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        assert!(!format!("{a:?}").contains("hunter2"));
        assert_eq!(changed_names(&a, &c), ["SECRET"]);
        assert_eq!(changed_names(&a, &Settings::default()), ["SECRET"]);
        assert!(changed_names(&a, &a).is_empty());
        assert_eq!(a.remembered(), ["SECRET@1"]);
        let remembered = Settings::from_names(&a.remembered());
        assert!(changed_names(&remembered, &a).is_empty());
        assert_eq!(changed_names(&remembered, &c), ["SECRET"]);
    }
}
