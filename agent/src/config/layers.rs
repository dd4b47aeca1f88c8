//! A config is layers merged in order: the main file, then the drop-ins in `config.d` beside it
//! (`/etc/drover/config.d/*.toml`, in name order, as zincati's), then the command line's flags.
//! A table merges key by key into the same table of the layers before it; any other value
//! replaces the earlier one. Each file is checked alone first, so that an unknown key or a
//! syntax error names the file it is in.

use std::path::{Path, PathBuf};

use super::{raw, ConfigError};

/// What a config was made of: the files in the order they were merged, and the merged text.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    pub files: Vec<PathBuf>,
    /// Flags given on the command line, merged last.
    pub flags: bool,
    pub merged: toml::Table,
}

impl Layers {
    /// How errors about a merged key name where it came from.
    pub fn origin(&self, main: &Path) -> PathBuf {
        if self.files.len() <= 1 && !self.flags {
            return main.to_owned();
        }
        let names: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        let flags = if self.flags { " + flags" } else { "" };
        PathBuf::from(format!("{}{flags}", names.join(" + ")))
    }
}

/// The drop-in directory of a config file: `config.toml` → `config.d`.
pub fn dropin_dir(main: &Path) -> PathBuf {
    main.with_extension("d")
}

/// The `*.toml` files of `dir` in name order; none when it does not exist. The directory must be
/// as safe as the config itself ([`crate::trusted::check_dir`]), even empty: whoever could write
/// it could take a drop-in away (one that sets `trusted_keys`, say) as well as add one.
pub fn dropins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    use crate::trusted::TrustError;
    match crate::trusted::check_dir(dir) {
        Ok(()) => {}
        Err(TrustError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(TrustError::Io(source)) => {
            return Err(ConfigError::Read {
                path: dir.to_owned(),
                source,
            })
        }
        Err(untrusted) => {
            return Err(ConfigError::Untrusted {
                path: dir.to_owned(),
                fix: untrusted.fix().unwrap_or_default(),
                source: untrusted,
            })
        }
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// One layer's text as a table, its keys checked against the config's.
pub fn parse(text: &str, path: &Path) -> Result<toml::Table, ConfigError> {
    let parse_error = |e: toml::de::Error| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    };
    let table: toml::Table = toml::from_str(text).map_err(parse_error)?;
    let _: raw::File = toml::from_str(text).map_err(parse_error)?;
    Ok(table)
}

/// Merges `over` into `base`: tables key by key, any other value replaced.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(value)) => merge(inner, value),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        parse(text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn later_layers_win_key_by_key() {
        let mut base = table(
            "[artifact]\nbucket = \"a\"\nkey = \"r/{version}.tar.gz\"\n[service]\nunits = [\"x.service\", \"y.service\"]\n",
        );
        merge(
            &mut base,
            table("[artifact]\nbucket = \"b\"\n[service]\nunits = [\"z.service\"]\n[aws]\nregion = \"eu-west-1\"\n"),
        );
        assert_eq!(
            base,
            table("[artifact]\nbucket = \"b\"\nkey = \"r/{version}.tar.gz\"\n[service]\nunits = [\"z.service\"]\n[aws]\nregion = \"eu-west-1\"\n")
        );
    }

    #[test]
    fn an_unknown_key_names_its_file() {
        let err = parse(
            "[artifact]\nbukket = \"a\"\n",
            Path::new("/etc/drover/config.d/10-x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/etc/drover/config.d/10-x.toml"), "{err}");
        assert!(err.contains("bukket"), "{err}");
    }

    #[test]
    fn a_drop_in_directory_others_can_write_is_refused_even_empty() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dropins_dir = dir.path().join("config.d");
        std::fs::create_dir(&dropins_dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(dropins(&dropins_dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty());
        std::fs::set_permissions(&dropins_dir, std::fs::Permissions::from_mode(0o777))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = dropins(&dropins_dir).map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains("config.d") && err.contains("not safe to act on"),
            "{err}"
        );
    }

    #[test]
    fn drop_ins_are_toml_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for name in ["20-b.toml", "10-a.toml", "README", "30-c.toml.disabled"] {
            std::fs::write(dir.path().join(name), "").unwrap_or_else(|e| panic!("{e}"));
        }
        let names: Vec<String> = dropins(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["10-a.toml", "20-b.toml"]);
        assert!(dropins(&dir.path().join("none"))
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty());
        assert_eq!(
            dropin_dir(Path::new("/etc/drover/config.toml")),
            Path::new("/etc/drover/config.d")
        );
    }
}
