//! Extended tar headers, read by us with a small cap rather than by the tar crate whole: GNU long
//! names (`L`, `K`) and PAX records (`x`), and how they apply to the member that follows.
//!
//! The tar crate is used in raw mode, for framing only. Its own handling would buffer an extended
//! header of any declared size in memory, and would let a PAX `size` override the ustar size
//! silently; a reader that trusts one and a writer or scanner that trusts the other disagree on
//! where the next header starts (the TARmageddon class, CVE-2025-62518). Here the two must agree.

/// The largest extended header we read. A PAX record set for one member (path, linkpath, times,
/// a few attributes) is a few KiB; anything bigger is an attack or a mistake.
pub const MAX_EXTENDED: u64 = 64 * 1024;

/// What the extended headers before a member say about it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Extended {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    /// A local PAX header came, whatever its records.
    pax_seen: bool,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    pax_size: Option<u64>,
}

/// A member's name, link target and size, after the extended headers are applied.
#[derive(Debug, PartialEq, Eq)]
pub struct Member {
    pub name: Vec<u8>,
    pub link: Option<Vec<u8>>,
    pub size: u64,
}

impl Extended {
    /// Whether an extended header is waiting for its member.
    pub fn is_pending(&self) -> bool {
        *self != Extended::default()
    }

    /// Refuses an extended header that declares more than [`MAX_EXTENDED`] bytes, before any
    /// of it is read.
    pub fn check_size(declared: u64) -> Result<(), String> {
        if declared > MAX_EXTENDED {
            return Err(format!(
                "extended header of {declared} bytes exceeds the limit of {MAX_EXTENDED}"
            ));
        }
        Ok(())
    }

    /// Takes in one extended-header entry of `kind` whose body is `bytes` (at most
    /// [`MAX_EXTENDED`], see [`Extended::check_size`]). Global PAX headers (`g`, which
    /// `git archive` writes) are parsed and ignored: nothing in them concerns where or what a
    /// member is.
    pub fn absorb(&mut self, kind: tar::EntryType, bytes: Vec<u8>) -> Result<(), String> {
        use tar::EntryType as T;
        let twice = |what: &str| Err(format!("two {what} headers for one member"));
        match kind {
            T::GNULongName if self.long_name.is_some() => twice("long-name"),
            T::GNULongLink if self.long_link.is_some() => twice("long-link"),
            T::GNULongName => {
                self.long_name = Some(trim_nul(bytes));
                Ok(())
            }
            T::GNULongLink => {
                self.long_link = Some(trim_nul(bytes));
                Ok(())
            }
            T::XHeader if self.pax_seen => twice("PAX"),
            T::XHeader => {
                self.pax_seen = true;
                self.pax(&bytes)
            }
            T::XGlobalHeader => parse_pax(&bytes).map(|_| ()),
            other => Err(format!("{other:?} is not an extended header")),
        }
    }

    fn pax(&mut self, bytes: &[u8]) -> Result<(), String> {
        for (key, value) in parse_pax(bytes)? {
            match key {
                b"path" => self.pax_path = Some(value.to_vec()),
                b"linkpath" => self.pax_link = Some(value.to_vec()),
                b"size" => {
                    let size = std::str::from_utf8(value)
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| {
                            format!(
                                "PAX size {:?} is not a number",
                                String::from_utf8_lossy(value)
                            )
                        })?;
                    self.pax_size = Some(size);
                }
                // Times, owners, attributes: a release does not take them from the archive.
                _ => {}
            }
        }
        Ok(())
    }

    /// Applies (and clears) the pending extended headers to the member with this ustar header.
    pub fn apply(&mut self, header: &tar::Header) -> Result<Member, String> {
        let ext = std::mem::take(self);
        let size = header.entry_size().map_err(|e| e.to_string())?;
        if let Some(pax) = ext.pax_size.filter(|&pax| pax != size) {
            return Err(format!(
                "PAX size {pax} disagrees with the header's size {size}"
            ));
        }
        let name = ext
            .pax_path
            .or(ext.long_name)
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let link = ext
            .pax_link
            .or(ext.long_link)
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        Ok(Member { name, link, size })
    }
}

fn trim_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    if let Some(end) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(end);
    }
    bytes
}

/// One PAX record: key and value, as bytes.
pub type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// PAX records: `"%d %s=%s\n"`, where the decimal length counts the whole record. Strict: a
/// length that does not land on the newline is an error, not something to guess around.
pub fn parse_pax(mut bytes: &[u8]) -> Result<Vec<PaxRecord<'_>>, String> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let space = bytes
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or("PAX record without a length")?;
        let len: usize = std::str::from_utf8(&bytes[..space])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or("PAX record length is not a number")?;
        if len <= space + 1 || len > bytes.len() || bytes[len - 1] != b'\n' {
            return Err(format!("PAX record length {len} does not fit the record"));
        }
        let record = &bytes[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("PAX record without '='")?;
        records.push((&record[..eq], &record[eq + 1..]));
        bytes = &bytes[len..];
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::EntryType as T;

    fn header(name: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(size);
        h
    }

    #[test]
    fn pax_records_are_parsed_strictly() {
        assert_eq!(
            parse_pax(b"11 path=ab\n12 size=100\n").unwrap(),
            vec![(&b"path"[..], &b"ab"[..]), (&b"size"[..], &b"100"[..])]
        );
        assert!(parse_pax(b"12 path=ab\n").is_err(), "length too long");
        assert!(parse_pax(b"10 path=ab\n").is_err(), "length too short");
        assert!(parse_pax(b"x path=ab\n").is_err());
        assert!(parse_pax(b"9 pathab\n").is_err());
        assert!(parse_pax(b"99999999999999999999999 a=b\n").is_err());
        assert!(parse_pax(b"").unwrap().is_empty());
    }

    #[test]
    fn pax_and_long_names_override_the_ustar_fields() {
        let mut ext = Extended::default();
        ext.absorb(T::GNULongName, b"a/b/c\0".to_vec()).unwrap();
        ext.absorb(T::XHeader, b"16 linkpath=tgt\n".to_vec())
            .unwrap();
        assert!(ext.is_pending());
        let m = ext.apply(&header("short", 0)).unwrap();
        assert_eq!(m.name, b"a/b/c");
        assert_eq!(m.link.as_deref(), Some(&b"tgt"[..]));
        assert!(!ext.is_pending());
        // PAX path beats a GNU long name.
        ext.absorb(T::GNULongName, b"gnu\0".to_vec()).unwrap();
        ext.absorb(T::XHeader, b"12 path=pax\n".to_vec()).unwrap();
        assert_eq!(ext.apply(&header("x", 0)).unwrap().name, b"pax");
    }

    #[test]
    fn a_pax_size_that_disagrees_is_refused() {
        let mut ext = Extended::default();
        ext.absorb(T::XHeader, b"12 size=512\n".to_vec()).unwrap();
        let err = ext.apply(&header("f", 0)).unwrap_err();
        assert!(err.contains("PAX size 512 disagrees"), "{err}");
        ext.absorb(T::XHeader, b"12 size=512\n".to_vec()).unwrap();
        assert_eq!(ext.apply(&header("f", 512)).unwrap().size, 512);
        assert!(ext.absorb(T::XHeader, b"11 size=-1\n".to_vec()).is_err());
    }

    #[test]
    fn oversized_or_repeated_extended_headers_are_refused() {
        let err = Extended::check_size(MAX_EXTENDED + 1).unwrap_err();
        assert!(err.contains("exceeds the limit"), "{err}");
        assert!(Extended::check_size(MAX_EXTENDED).is_ok());
        let mut ext = Extended::default();
        ext.absorb(T::GNULongName, b"a\0".to_vec()).unwrap();
        assert!(ext.absorb(T::GNULongName, b"b\0".to_vec()).is_err());
        // Two PAX headers for one member, whatever they hold.
        let mut ext = Extended::default();
        ext.absorb(T::XHeader, b"16 linkpath=tgt\n".to_vec())
            .unwrap();
        assert!(ext
            .absorb(T::XHeader, b"16 linkpath=two\n".to_vec())
            .is_err());
        let mut global = Extended::default();
        global
            .absorb(
                T::XGlobalHeader,
                b"52 comment=0123456789012345678901234567890123456789\n".to_vec(),
            )
            .unwrap();
        assert!(!global.is_pending(), "global headers are ignored");
    }
}
