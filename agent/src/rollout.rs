//! Staged rollouts, decided without a server: each instance takes a stable position in [0, 1)
//! from its instance id and the version, and adopts the version when the rollout reaches that
//! position. Pure: plain data in, plain data out; the clock and the instance id are arguments.
//!
//! The parameter's JSON value carries the rollout (docs/FLEET.md):
//!
//! ```json
//! {"version": "2.0.0", "rollout": {"duration": "30m"}}
//! {"version": "2.0.0", "rollout": {"start": "2026-12-01T10:00:00Z",
//!   "waves": [{"fraction": 0.02, "after": "0s"}, {"fraction": 0.25, "after": "10m"},
//!             {"fraction": 1, "after": "30m"}],
//!   "max_failures": 2}}
//! ```
//!
//! Without `start`, the rollout starts when the value was put (the parameter's
//! `LastModifiedDate`).

use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::version::Version;

/// Most waves a rollout may have.
const MAX_WAVES: usize = 100;
/// The longest `duration` or `after`: a year, far beyond any rollout, and far from overflowing
/// a time.
const MAX_SPAN: Duration = Duration::from_secs(366 * 86400);

#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// When position 0 comes up; `None`: when the value was put.
    pub start: Option<SystemTime>,
    pub schedule: Schedule,
    /// Failures reported for this request that hold the rest of the fleet; `None`: the config's.
    pub max_failures: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// Position `p` comes up at `start + p · duration`: an even spread.
    Linear(Duration),
    /// Position `p` belongs to the first wave whose `fraction` exceeds it.
    Waves(Vec<Wave>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Wave {
    /// The share of the fleet that has its turn once this wave has begun, in (0, 1].
    pub fraction: f64,
    /// When the wave begins, after the start.
    pub after: Duration,
}

/// When an instance's turn comes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Turn {
    pub at: SystemTime,
    /// Its wave, counted from 1; `None` for a linear rollout.
    pub wave: Option<usize>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RolloutError {
    #[error("\"rollout\" must be an object")]
    NotObject,
    #[error(
        "\"rollout\" has an unknown field {0:?} (known: start, duration, waves, max_failures)"
    )]
    UnknownField(String),
    #[error("\"rollout\" needs \"duration\" or \"waves\"")]
    NoSchedule,
    #[error("\"rollout\" has both \"duration\" and \"waves\"; give one")]
    TwoSchedules,
    #[error("\"rollout.{field}\": {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RolloutError {
    RolloutError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn duration(field: &str, value: &serde_json::Value) -> Result<Duration, RolloutError> {
    let text = value
        .as_str()
        .ok_or_else(|| invalid(field, "not a string like \"30m\""))?;
    let span = crate::units::parse_duration(text).map_err(|e| invalid(field, e))?;
    if span > MAX_SPAN {
        return Err(invalid(field, format!("{text:?} is longer than 366 days")));
    }
    Ok(span)
}

/// Reads the value of the `rollout` field.
pub fn parse(value: &serde_json::Value) -> Result<Rollout, RolloutError> {
    let object = value.as_object().ok_or(RolloutError::NotObject)?;
    if let Some(unknown) = object
        .keys()
        .find(|k| !["start", "duration", "waves", "max_failures"].contains(&k.as_str()))
    {
        return Err(RolloutError::UnknownField(unknown.clone()));
    }
    let start = match object.get("start") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(parse_time(v).map_err(|reason| invalid("start", reason))?),
    };
    let schedule = match (object.get("duration"), object.get("waves")) {
        (Some(d), None) => Schedule::Linear(duration("duration", d)?),
        (None, Some(w)) => Schedule::Waves(waves(w)?),
        (Some(_), Some(_)) => return Err(RolloutError::TwoSchedules),
        (None, None) => return Err(RolloutError::NoSchedule),
    };
    let max_failures = match object.get("max_failures") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| invalid("max_failures", "not a whole number of at least 1"))?,
        ),
    };
    Ok(Rollout {
        start,
        schedule,
        max_failures,
    })
}

fn parse_time(value: &serde_json::Value) -> Result<SystemTime, String> {
    let text = value.as_str().ok_or("not a string")?;
    crate::rfc3339::parse(text)
        .ok_or_else(|| format!("{text:?} is not a time like \"2026-12-01T10:00:00Z\""))
}

fn waves(value: &serde_json::Value) -> Result<Vec<Wave>, RolloutError> {
    let list = value
        .as_array()
        .ok_or_else(|| invalid("waves", "not a list"))?;
    if list.is_empty() || list.len() > MAX_WAVES {
        return Err(invalid("waves", format!("needs 1 to {MAX_WAVES} waves")));
    }
    let mut waves: Vec<Wave> = Vec::with_capacity(list.len());
    for (i, wave) in list.iter().enumerate() {
        let field = |name: &str| format!("waves[{i}].{name}");
        let object = wave
            .as_object()
            .ok_or_else(|| invalid(format!("waves[{i}]"), "not an object"))?;
        if let Some(unknown) = object
            .keys()
            .find(|k| !["fraction", "after"].contains(&k.as_str()))
        {
            return Err(invalid(
                format!("waves[{i}]"),
                format!("unknown field {unknown:?} (known: fraction, after)"),
            ));
        }
        let fraction = object
            .get("fraction")
            .and_then(|f| f.as_f64())
            .filter(|f| *f > 0.0 && *f <= 1.0)
            .ok_or_else(|| invalid(field("fraction"), "not a number in (0, 1]"))?;
        let after = match object.get("after") {
            Some(a) => duration(&field("after"), a)?,
            None => Duration::ZERO,
        };
        if let Some(before) = waves.last() {
            if fraction <= before.fraction {
                return Err(invalid(field("fraction"), "must grow from wave to wave"));
            }
            if after < before.after {
                return Err(invalid(field("after"), "comes before the wave ahead of it"));
            }
        }
        waves.push(Wave { fraction, after });
    }
    if waves.last().map(|w| w.fraction) != Some(1.0) {
        return Err(invalid(
            format!("waves[{}].fraction", waves.len() - 1),
            "the last wave must reach 1 (the whole fleet)",
        ));
    }
    Ok(waves)
}

/// This instance's place in the rollout of `version`: the first 8 bytes of
/// SHA-256(`{instance_id}/{version}`) as a fraction of 2⁶⁴. Stable for a version, spread evenly
/// across a fleet, and different for the next version, so the same instances are not always first.
pub fn position(instance_id: &str, version: &Version) -> f64 {
    let digest = Sha256::new()
        .chain_update(instance_id.as_bytes())
        .chain_update(b"/")
        .chain_update(version.as_str().as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits, as many as an f64 holds exactly: always below 1.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

impl Rollout {
    /// When `position` has its turn, for a rollout whose value was put at `put_at`.
    pub fn turn(&self, position: f64, put_at: SystemTime) -> Turn {
        let start = self.start.unwrap_or(put_at);
        // Spans are at most a year (`MAX_SPAN`): only a start near the end of time overflows.
        let after = |span: Duration| start.checked_add(span).unwrap_or(start);
        match &self.schedule {
            Schedule::Linear(duration) => Turn {
                at: after(duration.mul_f64(position.clamp(0.0, 1.0))),
                wave: None,
            },
            Schedule::Waves(waves) => {
                // The last wave reaches 1, and positions are below 1: the fallback is for form.
                let i = (waves.iter())
                    .position(|w| position < w.fraction)
                    .unwrap_or(waves.len().saturating_sub(1));
                Turn {
                    at: after(waves.get(i).map_or(Duration::ZERO, |w| w.after)),
                    wave: Some(i + 1),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn linear_rollout_spreads_positions_over_the_duration_from_the_put() {
        let r = parse(&json!({"duration": "100s"})).unwrap();
        assert_eq!(r.start, None);
        assert_eq!(
            r.turn(0.0, at(1000)),
            Turn {
                at: at(1000),
                wave: None
            }
        );
        assert_eq!(r.turn(0.25, at(1000)).at, at(1025));
        let started = parse(&json!({"start": "1970-01-01T00:10:00Z", "duration": "10s"})).unwrap();
        assert_eq!(started.turn(0.5, at(5)).at, at(605));
    }

    #[test]
    fn waves_give_each_position_its_wave_and_time() {
        let r = parse(&json!({"waves": [
            {"fraction": 0.1, "after": "0s"},
            {"fraction": 0.5, "after": "10m"},
            {"fraction": 1, "after": "1h"}
        ], "max_failures": 3}))
        .unwrap();
        assert_eq!(r.max_failures, Some(3));
        let turn = |p| r.turn(p, at(0));
        assert_eq!(
            turn(0.0),
            Turn {
                at: at(0),
                wave: Some(1)
            }
        );
        assert_eq!(turn(0.099).wave, Some(1));
        assert_eq!(
            turn(0.1),
            Turn {
                at: at(600),
                wave: Some(2)
            }
        );
        assert_eq!(
            turn(0.999),
            Turn {
                at: at(3600),
                wave: Some(3)
            }
        );
    }

    #[test]
    fn mistakes_are_named() {
        let err = |v: serde_json::Value| parse(&v).unwrap_err().to_string();
        assert_eq!(
            err(json!({"duraton": "1m"})),
            "\"rollout\" has an unknown field \"duraton\" (known: start, duration, waves, max_failures)"
        );
        assert_eq!(
            err(json!({})),
            "\"rollout\" needs \"duration\" or \"waves\""
        );
        assert!(
            err(json!({"duration": "1m", "waves": []})).contains("both \"duration\" and \"waves\"")
        );
        assert!(err(json!({"duration": 5})).contains("rollout.duration"));
        assert!(err(json!({"duration": "1m", "start": "tomorrow"})).contains("rollout.start"));
        assert!(err(json!({"waves": [{"fraction": 0.5}]})).contains("must reach 1"));
        assert!(
            err(json!({"waves": [{"fraction": 0.5}, {"fraction": 0.4}]}))
                .contains("waves[1].fraction")
        );
        assert!(err(json!({"waves": [{"fraction": 1.5}]})).contains("(0, 1]"));
        assert!(err(
            json!({"waves": [{"fraction": 0.5, "after": "5m"}, {"fraction": 1, "after": "1m"}]})
        )
        .contains("waves[1].after"));
        assert!(err(json!({"waves": [{"fraction": 1, "share": 1}]})).contains("\"share\""));
        assert!(err(json!({"duration": "1m", "max_failures": 0})).contains("max_failures"));
        assert_eq!(err(json!([1])), "\"rollout\" must be an object");
        // A span that would overflow a time is refused, not a crash of every instance.
        assert!(err(json!({"duration": "100000000000000d"})).contains("longer than 366 days"));
        assert!(
            err(json!({"waves": [{"fraction": 1, "after": "367d"}]})).contains("waves[0].after")
        );
        let far = parse(&json!({"start": "9999-12-31T23:59:59Z", "duration": "366d"})).unwrap();
        assert!(far.turn(0.99, at(0)).at >= far.start.unwrap());
    }

    #[test]
    fn positions_are_stable_spread_and_differ_by_version() {
        let v1 = Version::parse("1.0.0").unwrap();
        let v2 = Version::parse("2.0.0").unwrap();
        assert_eq!(position("i-0abc", &v1), position("i-0abc", &v1));
        assert_ne!(position("i-0abc", &v1), position("i-0abc", &v2));
        // 10,000 instances: each tenth of [0, 1) holds close to a thousand.
        let mut deciles = [0u32; 10];
        for n in 0..10_000 {
            let p = position(&format!("i-{n:017x}"), &v1);
            assert!((0.0..1.0).contains(&p));
            deciles[(p * 10.0) as usize] += 1;
        }
        assert!(
            deciles.iter().all(|d| (900..1100).contains(d)),
            "{deciles:?}"
        );
    }
}
