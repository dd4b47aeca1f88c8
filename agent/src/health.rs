//! The health gate: the app must answer 2xx `successes` times in a row within the start period,
//! and none of its units may enter `failed`.

use std::future::Future;
use std::time::Duration;

use crate::service::ServiceManager;

pub trait HealthProbe {
    /// One check: `Ok` for a 2xx answer, `Err` with what was seen otherwise.
    fn probe(&self) -> impl Future<Output = Result<(), String>>;
}

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub timeout: Duration,
    pub interval: Duration,
    pub successes: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HealthError {
    #[error("unit {0} entered the failed state")]
    UnitFailed(String),
    #[error("not healthy within {seconds} s: {last}")]
    Timeout { seconds: u64, last: String },
}

/// Polls until healthy or the start period runs out. Without a probe (no `[health] url`), the
/// units only have to stay out of `failed` for one interval; with no units either, there is
/// nothing to watch and nothing to wait for.
pub async fn wait_healthy<P: HealthProbe, M: ServiceManager>(
    probe: Option<&P>,
    services: &M,
    units: &[String],
    policy: Policy,
) -> Result<(), HealthError> {
    let deadline = tokio::time::Instant::now() + policy.timeout;
    let mut streak = 0;
    let mut last = String::from("no answer yet");
    if probe.is_none() && units.is_empty() {
        return Ok(());
    }
    loop {
        for unit in units {
            if let Ok(true) = services.is_failed(unit).await {
                return Err(HealthError::UnitFailed(unit.clone()));
            }
        }
        match probe {
            None if streak > 0 => return Ok(()),
            None => streak += 1,
            Some(p) => match p.probe().await {
                Ok(()) => {
                    streak += 1;
                    crate::failpoint::hit("mid_health");
                    if streak >= policy.successes {
                        return Ok(());
                    }
                }
                Err(e) => {
                    streak = 0;
                    last = e;
                }
            },
        }
        if tokio::time::Instant::now() + policy.interval > deadline {
            return Err(HealthError::Timeout {
                seconds: policy.timeout.as_secs(),
                last,
            });
        }
        tokio::time::sleep(policy.interval).await;
    }
}

/// The real probe: HTTP GET of `[health] url`.
pub struct HttpProbe {
    client: reqwest::Client,
    url: String,
}

impl HttpProbe {
    pub fn new(url: &str, per_request: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(per_request)
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            url: url.to_owned(),
        })
    }
}

impl HealthProbe for HttpProbe {
    async fn probe(&self) -> Result<(), String> {
        match self.client.get(&self.url).send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!(
                "{} answered HTTP {}",
                self.url,
                resp.status().as_u16()
            )),
            Err(e) if e.is_connect() => {
                Err(format!("{}: connection refused or unreachable", self.url))
            }
            Err(e) if e.is_timeout() => Err(format!("{}: timed out", self.url)),
            Err(e) => Err(format!("{}: {e}", self.url)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::UnitError;
    use std::cell::{Cell, RefCell};

    /// Answers from a script, then keeps repeating the last answer.
    struct Scripted(RefCell<Vec<bool>>);

    impl HealthProbe for Scripted {
        async fn probe(&self) -> Result<(), String> {
            let mut s = self.0.borrow_mut();
            let ok = if s.len() > 1 { s.remove(0) } else { s[0] };
            if ok {
                Ok(())
            } else {
                Err("HTTP 500".into())
            }
        }
    }

    struct Units {
        failed_after: Cell<Option<u32>>,
    }

    impl ServiceManager for Units {
        async fn restart(&self, _: &str) -> Result<(), UnitError> {
            Ok(())
        }
        async fn is_failed(&self, _: &str) -> Result<bool, UnitError> {
            Ok(match self.failed_after.get() {
                Some(0) => true,
                Some(n) => {
                    self.failed_after.set(Some(n - 1));
                    false
                }
                None => false,
            })
        }
    }

    impl crate::service::Confinement for Units {
        async fn confine(&self, _: &str, _: &str, _: u32) -> Result<(), UnitError> {
            Err(UnitError::Unreachable("not used by the health gate".into()))
        }
        async fn kill_all(&self, _: &str) -> Result<(), UnitError> {
            Ok(())
        }
    }

    const POLICY: Policy = Policy {
        timeout: Duration::from_secs(10),
        interval: Duration::from_secs(1),
        successes: 3,
    };

    fn units() -> Vec<String> {
        vec!["app.service".into()]
    }

    #[tokio::test(start_paused = true)]
    async fn needs_consecutive_successes() {
        let probe = Scripted(RefCell::new(vec![true, true, false, true, true, true]));
        let ok = Units {
            failed_after: Cell::new(None),
        };
        let start = tokio::time::Instant::now();
        assert_eq!(
            wait_healthy(Some(&probe), &ok, &units(), POLICY).await,
            Ok(())
        );
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(5),
            "six probes, one interval apart"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_with_the_last_error() {
        let probe = Scripted(RefCell::new(vec![false]));
        let ok = Units {
            failed_after: Cell::new(None),
        };
        let err = wait_healthy(Some(&probe), &ok, &units(), POLICY)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            HealthError::Timeout {
                seconds: 10,
                last: "HTTP 500".into()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_unit_fails_at_once() {
        let probe = Scripted(RefCell::new(vec![true, false]));
        let failing = Units {
            failed_after: Cell::new(Some(1)),
        };
        let err = wait_healthy(Some(&probe), &failing, &units(), POLICY)
            .await
            .unwrap_err();
        assert_eq!(err, HealthError::UnitFailed("app.service".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_url_units_must_stay_up_one_interval() {
        let ok = Units {
            failed_after: Cell::new(None),
        };
        assert_eq!(
            wait_healthy::<Scripted, _>(None, &ok, &units(), POLICY).await,
            Ok(())
        );
        let failing = Units {
            failed_after: Cell::new(Some(1)),
        };
        assert!(
            wait_healthy::<Scripted, _>(None, &failing, &units(), POLICY)
                .await
                .is_err()
        );
    }
}
