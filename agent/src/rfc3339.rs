//! RFC 3339 times in UTC (`2026-12-01T10:00:00Z`), as rollouts are written and status objects
//! say them: parsed and formatted here, so that the pure modules that use them need no SDK type.
//! Only `Z` is accepted, as the SDK's own parser did for these fields; fractions of a second are
//! read and dropped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` in UTC, whole seconds. Times before 1970 are written as 1970.
pub fn format(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, from 1970 on.
pub fn parse(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() < 20 || !b.is_ascii() {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<u64> {
        let part = text.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let seps = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if seps.iter().any(|&(i, c)| b[i] != c) || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let rest = &text[19..];
    let zone = match rest.strip_prefix('.') {
        Some(fraction) => {
            let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            &fraction[digits..]
        }
        None => rest,
    };
    if !matches!(zone, "Z" | "z") {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if year < 1970
        || !(1..=12).contains(&month)
        || day == 0
        || day > month_days[month as usize - 1]
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year as i64, month as u32, day as u32);
    let secs = days as u64 * 86_400 + hour * 3600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Seconds since the epoch kept as a number in memory, written as RFC 3339 text, and read as
/// either (state files written before the text form have numbers): `#[serde(with = ...)]`.
pub mod epoch_seconds {
    use std::time::{Duration, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(secs: &u64, s: S) -> Result<S::Ok, S::Error> {
        // A number too large for a time (a file tampered with) is written as the largest one.
        let at = UNIX_EPOCH.checked_add(Duration::from_secs(*secs));
        s.serialize_str(&super::format(
            at.unwrap_or(UNIX_EPOCH + Duration::from_secs(253_402_300_799)),
        ))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(u64),
            Text(String),
        }
        match <Either as serde::Deserialize>::deserialize(d)? {
            Either::Number(n) => Ok(n),
            Either::Text(t) => super::parse(&t)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {t:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_seconds_are_written_as_text_and_read_either_way() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct At {
            #[serde(with = "epoch_seconds")]
            at: u64,
        }
        let text = serde_json::to_string(&At { at: 1_796_000_000 }).unwrap_or_default();
        assert_eq!(text, r#"{"at":"2026-11-30T00:53:20Z"}"#);
        let back: Option<At> = serde_json::from_str(&text).ok();
        assert_eq!(back, Some(At { at: 1_796_000_000 }));
        let old: Option<At> = serde_json::from_str(r#"{"at":1796000000}"#).ok();
        assert_eq!(old, Some(At { at: 1_796_000_000 }));
        assert!(serde_json::from_str::<At>(r#"{"at":"yesterday"}"#).is_err());
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn formats_and_parses_back() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (1_764_583_200, "2025-12-01T10:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(format(at(secs)), text);
            assert_eq!(parse(text), Some(at(secs)), "{text}");
        }
        // Every day of four years, through a leap day, both ways.
        for day in 0..1461 {
            let t = at(1_700_000_000 + day * 86_400);
            assert_eq!(parse(&format(t)), Some(t));
        }
    }

    #[test]
    fn accepts_fractions_and_lowercase_refuses_the_rest() {
        assert_eq!(
            parse("2026-12-01T10:00:00.250Z"),
            parse("2026-12-01T10:00:00Z")
        );
        assert_eq!(parse("2026-12-01t10:00:00z"), parse("2026-12-01T10:00:00Z"));
        for bad in [
            "tomorrow",
            "2026-12-01",
            "2026-12-01 10:00:00Z",
            "2026-12-01T10:00:00",
            "2026-12-01T10:00:00+01:00",
            "2026-13-01T10:00:00Z",
            "2026-02-29T10:00:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T10:00:00.Z",
            "1969-12-31T23:59:59Z",
            "+026-12-01T10:00:00Z",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
