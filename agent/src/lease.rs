//! At most N instances out of service at once, fleet-wide, without a server (`[fleet]
//! max_in_flight`): N lease slots, small objects under the status prefix
//! (`leases/slot-{k}.json`), taken with S3's conditional writes. A slot is free when there is no
//! object, or its lease expired or was given back; taking one is a PUT with `If-None-Match: *`
//! (no object) or `If-Match: <its ETag>` (the lease seen), so of two instances that race for a
//! slot exactly one wins. An instance that dies holding a slot frees it when its lease expires;
//! one that comes back takes its own slot again.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::rfc3339;
use crate::store::{ArtifactStore, Condition, StoreError, Tagged};

/// A lease object is a few hundred bytes; anything much bigger is not one.
const MAX_LEASE: usize = 4096;

/// What a slot's object says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub instance: String,
    /// The version being deployed, for `drover fleet status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// RFC 3339, UTC: when the slot frees itself.
    pub expires: String,
    /// Given back before it expired.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

impl Lease {
    /// Whether the slot is free at `now`. A lease that cannot be read is taken as free: it
    /// holds nobody.
    fn is_free(&self, now: SystemTime) -> bool {
        self.released || rfc3339::parse(&self.expires).is_none_or(|expires| expires <= now)
    }
}

/// A slot this instance holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub key: String,
    etag: String,
    lease: Lease,
}

/// How many slots `max_in_flight` makes for a fleet of `size` instances: a count as it is, a
/// fraction of the fleet rounded down, at least one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MaxInFlight {
    Count(u32),
    Fraction(f64),
}

impl MaxInFlight {
    pub fn slots(self, size: usize) -> u32 {
        match self {
            MaxInFlight::Count(n) => n.max(1),
            MaxInFlight::Fraction(f) => ((size as f64 * f).floor() as u32).max(1),
        }
    }
}

/// Slot `slot`'s key in `leases`, the directory of the slots (`leases/` under the status
/// prefix, as the fleet module names it).
pub fn slot_key(leases: &str, slot: u32) -> String {
    format!("{leases}slot-{slot}.json")
}

/// Takes a free slot of `slots` for `instance`, starting at a place its id picks (so that a
/// fleet does not queue on slot 0). `None` when every slot is held.
pub async fn take<S: ArtifactStore>(
    store: &S,
    leases: &str,
    slots: u32,
    lease: Lease,
    now: SystemTime,
) -> Result<Option<Held>, StoreError> {
    let start = start_slot(&lease.instance, slots);
    for i in 0..slots {
        let key = slot_key(leases, (start + i) % slots);
        let condition = match store.get_tagged(&key, MAX_LEASE).await? {
            None => Condition::Absent,
            Some(Tagged { body, etag }) => {
                let seen = serde_json::from_slice::<Lease>(&body).ok();
                let ours_or_free =
                    seen.is_none_or(|seen| seen.instance == lease.instance || seen.is_free(now));
                if !ours_or_free {
                    continue;
                }
                Condition::Matches(etag)
            }
        };
        if let Some(etag) = store.put_if(&key, encode(&lease), condition).await? {
            return Ok(Some(Held { key, etag, lease }));
        }
    }
    Ok(None)
}

/// Extends `held` to `expires`. `Ok(false)` when the slot is no longer this instance's (its
/// lease expired and another took it).
pub async fn renew<S: ArtifactStore>(
    store: &S,
    held: &mut Held,
    expires: String,
) -> Result<bool, StoreError> {
    let lease = Lease {
        expires,
        ..held.lease.clone()
    };
    let condition = Condition::Matches(held.etag.clone());
    match store.put_if(&held.key, encode(&lease), condition).await? {
        Some(etag) => {
            *held = Held {
                key: held.key.clone(),
                etag,
                lease,
            };
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Gives `held` back. A slot that another instance took meanwhile is left alone.
pub async fn release<S: ArtifactStore>(store: &S, held: Held) -> Result<(), StoreError> {
    let lease = Lease {
        released: true,
        ..held.lease
    };
    store
        .put_if(&held.key, encode(&lease), Condition::Matches(held.etag))
        .await
        .map(drop)
}

/// The slots held at `now`, in slot order: `(key, lease)`.
pub async fn holders<S: ArtifactStore>(
    store: &S,
    leases: &str,
    now: SystemTime,
) -> Result<Vec<(String, Lease)>, StoreError> {
    let mut held = Vec::new();
    for key in store.list_keys(leases, 1000).await? {
        let Some(tagged) = store.get_tagged(&key, MAX_LEASE).await? else {
            continue;
        };
        if let Ok(lease) = serde_json::from_slice::<Lease>(&tagged.body) {
            if !lease.is_free(now) {
                held.push((key, lease));
            }
        }
    }
    Ok(held)
}

/// When a lease taken at `now` for `ttl` expires.
pub fn expiry(now: SystemTime, ttl: Duration) -> String {
    rfc3339::format(now + ttl)
}

fn encode(lease: &Lease) -> Vec<u8> {
    serde_json::to_vec(lease).unwrap_or_default()
}

fn start_slot(instance: &str, slots: u32) -> u32 {
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = instance.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % u64::from(slots.max(1))) as u32
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::ObjectBody;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// A bucket in memory that keeps what it is given, with conditional writes.
    #[derive(Default)]
    pub(crate) struct Bucket {
        objects: RefCell<BTreeMap<String, (Vec<u8>, u32)>>,
        next: RefCell<u32>,
    }

    pub(crate) struct NoBody;
    impl ObjectBody for NoBody {
        fn announced_len(&self) -> Option<u64> {
            None
        }
        async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, StoreError> {
            Ok(None)
        }
    }

    impl ArtifactStore for Bucket {
        type Body = NoBody;
        async fn get(&self, _: &str) -> Result<NoBody, StoreError> {
            Ok(NoBody)
        }
        async fn head(&self, key: &str) -> Result<crate::store::ObjectInfo, StoreError> {
            Err(StoreError::NotFound {
                bucket: "mem".into(),
                key: key.into(),
            })
        }
        async fn get_range(
            &self,
            _: &str,
            _: std::ops::Range<u64>,
            _: &str,
        ) -> Result<NoBody, StoreError> {
            Ok(NoBody)
        }
        async fn put_small(&self, _: &str, _: Vec<u8>) -> Result<(), StoreError> {
            Ok(())
        }
        async fn get_tagged(&self, key: &str, _: usize) -> Result<Option<Tagged>, StoreError> {
            Ok(self.objects.borrow().get(key).map(|(body, tag)| Tagged {
                body: body.clone(),
                etag: tag.to_string(),
            }))
        }
        async fn put_if(
            &self,
            key: &str,
            body: Vec<u8>,
            condition: Condition,
        ) -> Result<Option<String>, StoreError> {
            let mut objects = self.objects.borrow_mut();
            let holds = match (condition, objects.get(key)) {
                (Condition::Absent, None) => true,
                (Condition::Matches(etag), Some((_, tag))) => etag == tag.to_string(),
                _ => false,
            };
            if !holds {
                return Ok(None);
            }
            let tag = {
                let mut next = self.next.borrow_mut();
                *next += 1;
                *next
            };
            objects.insert(key.to_owned(), (body, tag));
            Ok(Some(tag.to_string()))
        }
        async fn list_keys(&self, prefix: &str, max: usize) -> Result<Vec<String>, StoreError> {
            let objects = self.objects.borrow();
            Ok(objects
                .keys()
                .filter(|k| k.starts_with(prefix))
                .take(max)
                .cloned()
                .collect())
        }
    }

    fn lease(instance: &str, now: SystemTime) -> Lease {
        Lease {
            instance: instance.into(),
            version: Some("2.0.0".into()),
            expires: expiry(now, Duration::from_secs(60)),
            released: false,
        }
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    #[tokio::test]
    async fn n_slots_hold_n_instances_and_a_given_back_slot_is_taken_again() {
        let bucket = Bucket::default();
        let now = at(0);
        let a = take(&bucket, "p/", 2, lease("i-a", now), now)
            .await
            .unwrap();
        let b = take(&bucket, "p/", 2, lease("i-b", now), now)
            .await
            .unwrap();
        assert!(a.is_some() && b.is_some());
        assert_ne!(a.as_ref().unwrap().key, b.as_ref().unwrap().key);
        let c = take(&bucket, "p/", 2, lease("i-c", now), now)
            .await
            .unwrap();
        assert_eq!(c, None, "both slots are held");
        assert_eq!(holders(&bucket, "p/", now).await.unwrap().len(), 2);
        release(&bucket, a.unwrap()).await.unwrap();
        let c = take(&bucket, "p/", 2, lease("i-c", now), now)
            .await
            .unwrap();
        assert!(c.is_some());
    }

    #[tokio::test]
    async fn an_expired_slot_frees_itself_and_its_old_holder_cannot_renew_or_release_it() {
        let bucket = Bucket::default();
        let dead = take(&bucket, "p/", 1, lease("i-dead", at(0)), at(0))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            take(&bucket, "p/", 1, lease("i-b", at(30)), at(30))
                .await
                .unwrap(),
            None
        );
        let b = take(&bucket, "p/", 1, lease("i-b", at(61)), at(61))
            .await
            .unwrap()
            .unwrap();
        let mut late = dead.clone();
        assert!(
            !renew(&bucket, &mut late, expiry(at(62), Duration::from_secs(60)))
                .await
                .unwrap()
        );
        release(&bucket, dead).await.unwrap();
        let holders = holders(&bucket, "p/", at(62)).await.unwrap();
        assert_eq!(holders.len(), 1);
        assert_eq!(holders[0].1.instance, "i-b");
        assert_eq!(holders[0].0, b.key);
    }

    #[tokio::test]
    async fn an_instance_that_comes_back_takes_its_own_slot_again() {
        let bucket = Bucket::default();
        take(&bucket, "p/", 1, lease("i-a", at(0)), at(0))
            .await
            .unwrap()
            .unwrap();
        let again = take(&bucket, "p/", 1, lease("i-a", at(5)), at(5))
            .await
            .unwrap();
        assert!(again.is_some());
    }

    #[test]
    fn a_fraction_of_the_fleet_is_at_least_one_slot() {
        assert_eq!(MaxInFlight::Fraction(0.25).slots(10), 2);
        assert_eq!(MaxInFlight::Fraction(0.25).slots(3), 1);
        assert_eq!(MaxInFlight::Count(0).slots(10), 1);
        assert_eq!(MaxInFlight::Count(3).slots(1), 3);
    }
}
