//! Which binary each architecture installs: `drover user-data --source ARCH=URL --sha256
//! ARCH=HEX`, once per architecture, and the install script picks the one `uname -m` names. A
//! source or digest without `ARCH=` is x86_64's, as before there were two.

use super::{check_sha256, check_source, UserDataError};

/// An architecture drover is built for, as `uname -m` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    fn parse(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// The binary one architecture installs, and its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub arch: Arch,
    /// An absolute path on the image or an `https://` URL.
    pub source: String,
    /// The binary's SHA-256, lowercase hex; the install refuses anything else.
    pub sha256: String,
}

impl Pin {
    pub fn new(arch: Arch, source: &str, sha256: &str) -> Pin {
        Pin {
            arch,
            source: source.into(),
            sha256: sha256.into(),
        }
    }
}

/// `ARCH=VALUE`, or a bare value (x86_64's). Only a known architecture's name counts as a
/// prefix: a URL may hold `=` in its query.
fn split(value: &str) -> Result<(Arch, &str), UserDataError> {
    if let Some((prefix, rest)) = value.split_once('=') {
        if let Some(arch) = Arch::parse(prefix) {
            return Ok((arch, rest));
        }
        if !prefix.contains(['/', ':']) {
            return Err(UserDataError::Arch(prefix.into()));
        }
    }
    Ok((Arch::X86_64, value))
}

/// Pairs `--source` and `--sha256` values by architecture: each architecture named needs both,
/// once.
pub fn pair(sources: &[String], digests: &[String]) -> Result<Vec<Pin>, UserDataError> {
    let mut pins: Vec<Pin> = Vec::new();
    for source in sources {
        let (arch, source) = split(source)?;
        if pins.iter().any(|p| p.arch == arch) {
            return Err(UserDataError::Pin(format!(
                "--source given twice for {}",
                arch.name()
            )));
        }
        pins.push(Pin::new(arch, source, ""));
    }
    for digest in digests {
        let (arch, digest) = split(digest)?;
        let pin = pins.iter_mut().find(|p| p.arch == arch).ok_or_else(|| {
            UserDataError::Pin(format!("--sha256 for {} without its --source", arch.name()))
        })?;
        if !pin.sha256.is_empty() {
            return Err(UserDataError::Pin(format!(
                "--sha256 given twice for {}",
                arch.name()
            )));
        }
        pin.sha256 = digest.into();
    }
    if let Some(pin) = pins.iter().find(|p| p.sha256.is_empty()) {
        return Err(UserDataError::Pin(format!(
            "--source for {} without its --sha256",
            pin.arch.name()
        )));
    }
    pins.sort_by_key(|p| p.arch);
    Ok(pins)
}

/// The install script's arguments, as YAML list items: `ARCH`, `SOURCE`, `SHA256` for each pin.
pub fn block(pins: &[Pin]) -> Result<String, UserDataError> {
    if pins.is_empty() {
        return Err(UserDataError::Pin("no binary to install".into()));
    }
    let mut out = String::new();
    for pin in pins {
        check_source(&pin.source)?;
        check_sha256(&pin.sha256)?;
        for item in [pin.arch.name(), &pin.source, &pin.sha256] {
            out.push_str(&format!("- \"{item}\"\n"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn sources_and_digests_pair_by_architecture() {
        let pins = pair(
            &strings(&["aarch64=https://d.example/drover-arm", "/usr/lib/drover"]),
            &strings(&[
                &format!("x86_64={}", hex('a')),
                &format!("aarch64={}", hex('b')),
            ]),
        )
        .unwrap();
        assert_eq!(
            pins,
            [
                Pin::new(Arch::X86_64, "/usr/lib/drover", &hex('a')),
                Pin::new(Arch::Aarch64, "https://d.example/drover-arm", &hex('b')),
            ]
        );
        // A bare pair is x86_64's, and a URL's own "=" is no prefix.
        let one = pair(
            &strings(&["https://d.example/get?arch=x86_64"]),
            &strings(&[&hex('c')]),
        )
        .unwrap();
        assert_eq!(one[0].arch, Arch::X86_64);
        assert_eq!(one[0].source, "https://d.example/get?arch=x86_64");
    }

    #[test]
    fn what_does_not_pair_is_refused_naming_it() {
        let cases: [(&[&str], &[&str], &str); 5] = [
            (&["arm64=/x"], &["arm64=0"], "\"arm64\""),
            (&["/x", "x86_64=/y"], &[], "--source given twice for x86_64"),
            (
                &["aarch64=/x"],
                &[],
                "--source for aarch64 without its --sha256",
            ),
            (
                &["/x"],
                &["aarch64=0"],
                "--sha256 for aarch64 without its --source",
            ),
            (&[], &[], "no binary"),
        ];
        for (sources, digests, says) in cases {
            let err = pair(&strings(sources), &strings(digests))
                .and_then(|pins| block(&pins))
                .unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn the_block_lists_each_pin_in_order() {
        let pins = [
            Pin::new(Arch::X86_64, "/a", &hex('1')),
            Pin::new(Arch::Aarch64, "/b", &hex('2')),
        ];
        assert_eq!(
            block(&pins).unwrap(),
            format!(
                "- \"x86_64\"\n- \"/a\"\n- \"{}\"\n- \"aarch64\"\n- \"/b\"\n- \"{}\"\n",
                hex('1'),
                hex('2')
            )
        );
        let bad = [Pin::new(Arch::Aarch64, "http://plain", &hex('1'))];
        assert!(block(&bad).is_err());
    }
}
