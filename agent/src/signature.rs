//! Signed releases in minisign's format (SPEC, "Signed releases"): verifying `{key}.minisig`
//! against `[artifact] trusted_keys`, and signing for `drover publish --sign`.
//!
//! A public key is `base64("Ed" ‖ key id[8] ‖ Ed25519 key[32])`. A signature file is
//!
//! ```text
//! untrusted comment: <anything>
//! base64(algorithm[2] ‖ key id[8] ‖ signature[64])
//! trusted comment: timestamp:1700000000<TAB>file:1.4.2.tar.gz<TAB>hashed
//! base64(global signature[64])
//! ```
//!
//! where the signature is over the file's BLAKE2b-512 digest (algorithm `ED`, "prehashed",
//! minisign's default) or over the file itself (`Ed`, legacy), and the global signature is over
//! `signature ‖ trusted comment`, so the comment cannot be changed either. Ed25519 is ring's
//! (already linked for TLS); BLAKE2b is the `blake2` crate's.
//!
//! The bytes alone do not say which version they are: a signed 1.0 copied to 2.0's key would
//! verify. So the trusted comment must also name what is deployed ([`Binding`]): a
//! `version:2.0` or `key:releases/2.0/app.tar.gz` token, or minisign's default `file:NAME` when
//! the file name itself carries the version.

use base64::Engine;
use blake2::{Blake2b512, Digest};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Largest artifact a legacy (not prehashed) signature is checked on: it signs the whole file,
/// which must then be in memory.
pub const MAX_LEGACY_SIZE: u64 = 64 << 20;
/// Largest `.minisig` object read.
pub const MAX_SIGNATURE_FILE: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("not a minisign public key: {0}")]
    BadPublicKey(String),
    #[error("malformed signature file: {0}")]
    Malformed(String),
    #[error("signed by key {0}, which is not in trusted_keys")]
    UnknownKey(String),
    #[error("the signature does not match the artifact")]
    Mismatch,
    #[error("the trusted comment does not match its signature")]
    CommentMismatch,
    #[error(
        "the trusted comment {found:?} does not bind the signature to {key} (version {version}): \
         it must hold {wanted}"
    )]
    Unbound {
        key: String,
        version: String,
        found: String,
        /// The tokens that would have bound it, as the error says them.
        wanted: String,
    },
    #[error(
        "a legacy (not prehashed) signature on a {size}-byte artifact; legacy signatures are \
         checked up to {MAX_LEGACY_SIZE} bytes: sign with `minisign -S` (prehashed by default)"
    )]
    LegacyTooLarge { size: u64 },
    #[error("not a minisign secret key: {0}")]
    BadSecretKey(String),
}

/// A trusted public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub id: [u8; 8],
    key: [u8; 32],
}

impl PublicKey {
    /// Parses the base64 line of a `minisign.pub` (the whole file is accepted too).
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let line = key_line(text).ok_or_else(|| SignatureError::BadPublicKey("empty".into()))?;
        let bytes = B64
            .decode(line)
            .map_err(|e| SignatureError::BadPublicKey(format!("{line:?}: {e}")))?;
        if bytes.len() != 42 || &bytes[..2] != b"Ed" {
            return Err(SignatureError::BadPublicKey(format!(
                "{line:?} is not an Ed25519 key (42 bytes starting with \"Ed\")"
            )));
        }
        let mut id = [0; 8];
        id.copy_from_slice(&bytes[2..10]);
        let mut key = [0; 32];
        key.copy_from_slice(&bytes[10..42]);
        Ok(Self { id, key })
    }

    /// minisign's way of naming a key: its id in hex, most significant byte first.
    pub fn id_hex(&self) -> String {
        key_id_hex(&self.id)
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, self.key)
            .verify(message, signature)
            .is_ok()
    }
}

/// The base64 line of a minisign key file: the first that is not blank or the untrusted comment.
/// A file of that line alone works too.
fn key_line(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
}

fn key_id_hex(id: &[u8; 8]) -> String {
    id.iter().rev().map(|b| format!("{b:02X}")).collect()
}

/// A parsed `.minisig` file.
#[derive(Clone, Debug)]
pub struct Signature {
    prehashed: bool,
    key_id: [u8; 8],
    signature: [u8; 64],
    trusted_comment: String,
    global: [u8; 64],
}

impl Signature {
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let bad = |why: &str| SignatureError::Malformed(why.to_owned());
        let mut lines = text.lines();
        let untrusted = lines.next().ok_or_else(|| bad("empty"))?;
        if !untrusted.starts_with("untrusted comment:") {
            return Err(bad("the first line is not an untrusted comment"));
        }
        let sig = B64
            .decode(lines.next().ok_or_else(|| bad("no signature line"))?.trim())
            .map_err(|_| bad("the signature line is not base64"))?;
        if sig.len() != 74 {
            return Err(bad("the signature line is not 74 bytes"));
        }
        let prehashed = match &sig[..2] {
            b"ED" => true,
            b"Ed" => false,
            _ => return Err(bad("unknown signature algorithm")),
        };
        let trusted_comment = lines
            .next()
            .and_then(|l| l.strip_prefix("trusted comment: "))
            .ok_or_else(|| bad("no trusted comment"))?
            .to_owned();
        let global = B64
            .decode(
                lines
                    .next()
                    .ok_or_else(|| bad("no global signature"))?
                    .trim(),
            )
            .map_err(|_| bad("the global signature is not base64"))?;
        let global: [u8; 64] = global
            .try_into()
            .map_err(|_| bad("the global signature is not 64 bytes"))?;
        let mut key_id = [0; 8];
        key_id.copy_from_slice(&sig[2..10]);
        let mut signature = [0; 64];
        signature.copy_from_slice(&sig[10..74]);
        Ok(Self {
            prehashed,
            key_id,
            signature,
            trusted_comment,
            global,
        })
    }

    /// Whether the signature is over the file's BLAKE2b-512 digest (else over the file itself).
    pub fn is_prehashed(&self) -> bool {
        self.prehashed
    }

    /// The id of the key that made it, as minisign prints it.
    pub fn key_id_hex(&self) -> String {
        key_id_hex(&self.key_id)
    }

    /// The trusted key that made this signature, by its id; the signature itself is not
    /// checked yet (that needs the artifact: [`Signature::verify`]).
    pub fn signer<'k>(&self, keys: &'k [PublicKey]) -> Result<&'k PublicKey, SignatureError> {
        keys.iter()
            .find(|k| k.id == self.key_id)
            .ok_or_else(|| SignatureError::UnknownKey(self.key_id_hex()))
    }

    /// Checks the signature against the trusted keys, for the artifact `binding` names whose
    /// content is `signed` (its BLAKE2b-512 digest when prehashed, else the whole file).
    /// Returns the key that signed it.
    pub fn verify<'k>(
        &self,
        keys: &'k [PublicKey],
        signed: &[u8],
        binding: &Binding,
    ) -> Result<&'k PublicKey, SignatureError> {
        let key = self.signer(keys)?;
        if !key.verify(signed, &self.signature) {
            return Err(SignatureError::Mismatch);
        }
        self.verify_comment(keys, binding)
    }

    /// What can be checked without the artifact: a trusted key made it, its trusted comment is
    /// the one signed, and that comment binds it to the artifact `binding` names (`drover
    /// promote`, before the parameter names a version whose signature instances would refuse).
    pub fn verify_comment<'k>(
        &self,
        keys: &'k [PublicKey],
        binding: &Binding,
    ) -> Result<&'k PublicKey, SignatureError> {
        let key = self.signer(keys)?;
        let mut global_message = self.signature.to_vec();
        global_message.extend_from_slice(self.trusted_comment.as_bytes());
        if !key.verify(&global_message, &self.global) {
            return Err(SignatureError::CommentMismatch);
        }
        binding.check(&self.trusted_comment)?;
        Ok(key)
    }
}

/// What a signature must be bound to, through its trusted comment: the artifact's key and the
/// version it is deployed as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The object key, `releases/2.0/app.tar.gz`.
    pub key: String,
    pub version: String,
    /// Whether the key's file name (its last `/` segment) carries the version: with `{version}`
    /// in the template's last segment, no two versions share a file name, so minisign's default
    /// `file:NAME` binds the version as well.
    pub file_name_carries_version: bool,
}

impl Binding {
    /// The key's last segment, the name minisign's default comment gives (`file:NAME`).
    pub fn file_name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or(&self.key)
    }

    /// Checks a trusted comment (tab-separated tokens). Every `version:` and `key:` token in it
    /// must name this version and key exactly, and there must be one; without either, a
    /// `file:NAME` token binds only when the file name carries the version.
    pub fn check(&self, comment: &str) -> Result<(), SignatureError> {
        let (version, key) = (
            format!("version:{}", self.version),
            format!("key:{}", self.key),
        );
        let mut explicit = comment
            .split('\t')
            .filter(|t| t.starts_with("version:") || t.starts_with("key:"))
            .peekable();
        let bound = match explicit.peek() {
            Some(_) => explicit.all(|t| t == version || t == key),
            None => {
                let file = format!("file:{}", self.file_name());
                self.file_name_carries_version && comment.split('\t').any(|t| t == file)
            }
        };
        if bound {
            return Ok(());
        }
        let mut wanted = format!("{version} or {key}");
        if self.file_name_carries_version {
            wanted = format!("{version}, {key} or file:{}", self.file_name());
        }
        Err(SignatureError::Unbound {
            key: self.key.clone(),
            version: self.version.clone(),
            found: comment.to_owned(),
            wanted,
        })
    }
}

/// BLAKE2b-512, fed as the artifact streams in, for prehashed signatures.
#[derive(Clone, Default)]
pub struct Prehash(Blake2b512);

impl Prehash {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> [u8; 64] {
        self.0.finalize().into()
    }
}

/// An unencrypted minisign secret key (`minisign -G -W`), for `drover publish --sign`.
pub struct SecretKey {
    id: [u8; 8],
    seed: [u8; 32],
    public: [u8; 32],
}

impl SecretKey {
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let bad = |why: &str| SignatureError::BadSecretKey(why.to_owned());
        let line = key_line(text).ok_or_else(|| bad("empty"))?;
        let bytes = B64.decode(line).map_err(|_| bad("not base64"))?;
        // "Ed", KDF algorithm[2], checksum algorithm[2], salt[32], opslimit[8], memlimit[8],
        // then key id[8] ‖ secret key[64] ‖ checksum[32].
        if bytes.len() != 158 || &bytes[..2] != b"Ed" || &bytes[4..6] != b"B2" {
            return Err(bad("not an Ed25519 secret key of minisign's format"));
        }
        if &bytes[2..4] != b"\0\0" {
            return Err(bad(
                "the key is encrypted with a password; drover signs with unencrypted keys \
                 (minisign -G -W), or sign with minisign -S itself",
            ));
        }
        let body = &bytes[54..];
        let (id, rest) = body.split_at(8);
        let (secret, checksum) = rest.split_at(64);
        let mut hasher = blake2::Blake2b::<blake2::digest::consts::U32>::new();
        hasher.update(&bytes[..2]);
        hasher.update(id);
        hasher.update(secret);
        // minisign leaves the checksum of an unencrypted key zero; ring checks below that the
        // secret and public halves belong together either way.
        if checksum.iter().any(|&b| b != 0) && hasher.finalize().as_slice() != checksum {
            return Err(bad("checksum mismatch: the key is damaged"));
        }
        let mut key = Self {
            id: [0; 8],
            seed: [0; 32],
            public: [0; 32],
        };
        key.id.copy_from_slice(id);
        key.seed.copy_from_slice(&secret[..32]);
        key.public.copy_from_slice(&secret[32..]);
        Ok(key)
    }

    /// The key's id, as minisign prints it.
    pub fn key_id_hex(&self) -> String {
        key_id_hex(&self.id)
    }

    /// The matching public key, as the base64 line of a `minisign.pub`.
    pub fn public_key_line(&self) -> String {
        let mut bytes = b"Ed".to_vec();
        bytes.extend_from_slice(&self.id);
        bytes.extend_from_slice(&self.public);
        B64.encode(bytes)
    }

    /// A prehashed signature file for the artifact `binding` names, with BLAKE2b-512 `digest`:
    /// minisign's default trusted comment with a `version:` token added, which binds the
    /// signature to the version whatever the key template (see [`Binding`]).
    pub fn sign(
        &self,
        digest: &[u8; 64],
        binding: &Binding,
        timestamp: u64,
    ) -> Result<String, SignatureError> {
        let pair =
            ring::signature::Ed25519KeyPair::from_seed_and_public_key(&self.seed, &self.public)
                .map_err(|_| {
                    SignatureError::BadSecretKey("the secret and public halves do not match".into())
                })?;
        let signature = pair.sign(digest);
        let trusted = format!(
            "timestamp:{timestamp}\tfile:{}\tversion:{}\thashed",
            binding.file_name(),
            binding.version
        );
        let mut global_message = signature.as_ref().to_vec();
        global_message.extend_from_slice(trusted.as_bytes());
        let global = pair.sign(&global_message);
        let mut line = b"ED".to_vec();
        line.extend_from_slice(&self.id);
        line.extend_from_slice(signature.as_ref());
        Ok(format!(
            "untrusted comment: signature from drover secret key {}\n{}\ntrusted comment: {trusted}\n{}\n",
            key_id_hex(&self.id),
            B64.encode(line),
            B64.encode(global.as_ref())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by minisign 0.11: `minisign -G -W`, then `minisign -S` (prehashed) and `minisign -S -l`
    // (legacy) of a file 1.4.2.tar.gz holding "hello drover\n".
    const PUBLIC: &str = "untrusted comment: minisign public key 59A84E62A21966DF\n\
        RWTfZhmiYk6oWS/UzQMB8jdJMz5Ppwfx1fz54iL+MZZj/+6kykRWEcXB\n";
    const SECRET: &str = "untrusted comment: minisign encrypted secret key\n\
        RWQAAEIyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA32YZomJOqFnLGPctaQGi9rr/QEXo94JrESll5OT3X5aKVf5U3PtZmy/UzQMB8jdJMz5Ppwfx1fz54iL+MZZj/+6kykRWEcXBAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
    const ENCRYPTED: &str = "untrusted comment: minisign encrypted secret key\n\
        RWRTY0Iysu2nz+8vxwd/XUIaiOCX6Dd9WJCzcQH/MxbTJryeOPoAAAACAAAAAAAAAEAAAAAA1B7ODFeNcCNvLxhFsJkF6oRV6FVz9TPuFgz5r5E6HR/noBa4rSw61BO0Agr3/AQ0ENi3GXWuhof1LO8tYaavuug1GtzeNZJDgbOxGW50WeM1Tt/H/B5Fv5Dxevmwnc5NsqbOkZkN80s=\n";
    const PREHASHED: &str = "untrusted comment: signature from minisign secret key\n\
        RUTfZhmiYk6oWXEgH5IQ7zQM8oSNmjVHaphMM/GF0XK63gdg5zFPBHOg//1CsG7BrxG1jEW0Y5orani4Fuv3hIEFiHGveI3lTA8=\n\
        trusted comment: timestamp:1796087862\tfile:1.4.2.tar.gz\thashed\n\
        RBy3PFHVluVMenqAJujL73nK2ALv76M1pxcEGpIcDuiyGVJRQPGjlsNbctpkWoQAAU7tyMxGr+9zqd7XXN7AAQ==\n";
    const LEGACY: &str = "untrusted comment: signature from minisign secret key\n\
        RWTfZhmiYk6oWc4jnpx3rJ6afSjGgWEFEBycJxkNayJv3Px3sWfEf3e+BgHNVuRmjJWWCyh2XntlqU0YRxyKG/w1lo2bcbYK+QY=\n\
        trusted comment: timestamp:1796087862\tfile:1.4.2.tar.gz\n\
        tD17lo+lnNFBfAaHaFMl2Wk68F2hiVEoT66m3OOGvYmll8UwXLT6PDFbcHf9ZO65F/NOIPd8NfzzeWwtNIAaBQ==\n";
    const DATA: &[u8] = b"hello drover\n";
    /// Another key, made the same way.
    const OTHER: &str = "RWTQsBtGE2aKf/EoOlpqupGfF+JUp1HDPiulpxOVbROJ0gpnptJUeyQn";

    /// The default template's binding: `releases/{version}.tar.gz`.
    fn release(version: &str) -> Binding {
        Binding {
            key: format!("releases/{version}.tar.gz"),
            version: version.into(),
            file_name_carries_version: true,
        }
    }

    fn prehash(data: &[u8]) -> [u8; 64] {
        let mut h = Prehash::default();
        h.update(data);
        h.finish()
    }

    #[test]
    fn minisign_signatures_verify_prehashed_and_legacy() {
        let keys = [
            PublicKey::parse(OTHER).unwrap(),
            PublicKey::parse(PUBLIC).unwrap(),
        ];
        assert_eq!(keys[1].id_hex(), "59A84E62A21966DF");
        let sig = Signature::parse(PREHASHED).unwrap();
        assert!(sig.is_prehashed());
        let key = sig
            .verify(&keys, &prehash(DATA), &release("1.4.2"))
            .unwrap();
        assert_eq!(key.id_hex(), "59A84E62A21966DF");
        let legacy = Signature::parse(LEGACY).unwrap();
        assert!(!legacy.is_prehashed());
        legacy.verify(&keys, DATA, &release("1.4.2")).unwrap();
    }

    #[test]
    fn what_does_not_match_is_named() {
        let keys = [PublicKey::parse(PUBLIC).unwrap()];
        let sig = Signature::parse(PREHASHED).unwrap();
        assert_eq!(
            sig.verify(&keys, &prehash(b"hello drovers\n"), &release("1.4.2")),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            sig.verify(&keys, &prehash(DATA), &release("1.4.3")),
            Err(SignatureError::Unbound {
                key: "releases/1.4.3.tar.gz".into(),
                version: "1.4.3".into(),
                found: "timestamp:1796087862\tfile:1.4.2.tar.gz\thashed".into(),
                wanted: "version:1.4.3, key:releases/1.4.3.tar.gz or file:1.4.3.tar.gz".into(),
            })
        );
        let other = [PublicKey::parse(OTHER).unwrap()];
        assert_eq!(
            sig.verify(&other, &prehash(DATA), &release("1.4.2")),
            Err(SignatureError::UnknownKey("59A84E62A21966DF".into()))
        );
        // A trusted comment edited after signing (to name another file, say).
        let edited = PREHASHED.replace("file:1.4.2.tar.gz", "file:1.4.3.tar.gz");
        assert_eq!(
            Signature::parse(&edited)
                .unwrap()
                .verify(&keys, &prehash(DATA), &release("1.4.3")),
            Err(SignatureError::CommentMismatch)
        );
        for bad in [
            "",
            "untrusted comment: x\n",
            "hello\nworld\n",
            &PREHASHED[..150],
        ] {
            assert!(
                matches!(Signature::parse(bad), Err(SignatureError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(PublicKey::parse("RWQ=").is_err());
    }

    #[test]
    fn signs_like_minisign_with_an_unencrypted_key() {
        let secret = SecretKey::parse(SECRET).unwrap();
        assert_eq!(secret.public_key_line(), PUBLIC.lines().nth(1).unwrap());
        let text = secret
            .sign(&prehash(DATA), &release("1.4.2"), 1_796_087_862)
            .unwrap();
        let keys = [PublicKey::parse(PUBLIC).unwrap()];
        let sig = Signature::parse(&text).unwrap();
        assert!(sig.is_prehashed());
        sig.verify(&keys, &prehash(DATA), &release("1.4.2"))
            .unwrap();
        assert_eq!(
            text.lines().nth(2),
            Some("trusted comment: timestamp:1796087862\tfile:1.4.2.tar.gz\tversion:1.4.2\thashed")
        );
        // The version token binds it whatever the key template: also under a directory.
        let in_dir = Binding {
            key: "releases/1.4.2/app.tar.gz".into(),
            version: "1.4.2".into(),
            file_name_carries_version: false,
        };
        let text = secret.sign(&prehash(DATA), &in_dir, 1).unwrap();
        let sig = Signature::parse(&text).unwrap();
        sig.verify(&keys, &prehash(DATA), &in_dir).unwrap();
        let replayed = Binding {
            key: "releases/2.0/app.tar.gz".into(),
            version: "2.0".into(),
            ..in_dir
        };
        assert!(matches!(
            sig.verify(&keys, &prehash(DATA), &replayed),
            Err(SignatureError::Unbound { .. })
        ));
        // Ed25519 is deterministic: the same signature line as minisign's.
        assert_eq!(text.lines().nth(1), PREHASHED.lines().nth(1));
        let e = SecretKey::parse(ENCRYPTED).err().unwrap().to_string();
        assert!(e.contains("encrypted with a password"), "{e}");
    }

    /// `releases/{version}/app.tar.gz`: the file name is the same for every version.
    fn in_dir(version: &str) -> Binding {
        Binding {
            key: format!("releases/{version}/app.tar.gz"),
            version: version.into(),
            file_name_carries_version: false,
        }
    }

    #[test]
    fn the_comment_must_bind_the_version_or_the_key() {
        let ok = |b: &Binding, comment: &str| b.check(comment).is_ok();
        // minisign's default comment binds through the file name only where it carries the
        // version.
        let default = "timestamp:1\tfile:app.tar.gz\thashed";
        assert!(!ok(&in_dir("2.0"), default));
        assert!(ok(&release("2.0"), "timestamp:1\tfile:2.0.tar.gz\thashed"));
        assert!(!ok(&release("2.0"), "timestamp:1\tfile:1.0.tar.gz\thashed"));
        let carried = Binding {
            key: "app/app-2.0.tar.gz".into(),
            version: "2.0".into(),
            file_name_carries_version: true,
        };
        assert!(ok(&carried, "file:app-2.0.tar.gz"));
        assert!(!ok(&carried, "file:2.0.tar.gz"));

        // An explicit token, with or without minisign's, under any template.
        for b in [in_dir("2.0"), release("2.0")] {
            assert!(ok(&b, "version:2.0"), "{b:?}");
            assert!(ok(&b, &format!("key:{}", b.key)), "{b:?}");
            assert!(ok(
                &b,
                "timestamp:1\tfile:whatever.tgz\tversion:2.0\thashed"
            ));
            assert!(ok(&b, &format!("version:2.0\tkey:{}", b.key)));
            // Each explicit token must match: exactly, all of them.
            for bad in [
                "version:1.0",
                "version:2.0.0",
                "version:2",
                "version:2.0 built by CI",
                "version: 2.0",
                "Version:2.0",
                "key:releases/1.0/app.tar.gz",
                "version:2.0\tversion:1.0",
                "version:2.0\tkey:releases/1.0/app.tar.gz",
                "",
                "hashed",
            ] {
                assert!(!ok(&b, bad), "{b:?} {bad:?}");
            }
        }
        // An explicit token that names another version is not overridden by a matching file name.
        assert!(!ok(&release("2.0"), "file:2.0.tar.gz\tversion:1.0"));

        // The error names the key, the version, the comment and what would do.
        let e = in_dir("2.0").check(default).unwrap_err().to_string();
        assert_eq!(
            e,
            "the trusted comment \"timestamp:1\\tfile:app.tar.gz\\thashed\" does not bind the \
             signature to releases/2.0/app.tar.gz (version 2.0): it must hold version:2.0 or \
             key:releases/2.0/app.tar.gz"
        );
    }
}
