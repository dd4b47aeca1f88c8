//! The real [`ServiceManager`]: systemd's manager API on the system bus (`DBUS_SYSTEM_BUS_ADDRESS`
//! is honoured), as `systemctl restart` would use it, minus the process.

use std::time::Duration;

use futures_util::StreamExt;
use zbus::OwnedObjectPath;

use crate::service::{ServiceManager, UnitError};

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn subscribe(&self) -> zbus::Result<()>;

    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
}

/// Connects to the bus on first use, so an agent with no units never needs one, and a bus that
/// was down at start is tried again on the next restart.
pub struct Systemd {
    connection: tokio::sync::OnceCell<zbus::Connection>,
    job_timeout: Duration,
}

impl Systemd {
    pub fn new(job_timeout: Duration) -> Self {
        Self {
            connection: tokio::sync::OnceCell::new(),
            job_timeout,
        }
    }

    async fn connection(&self) -> Result<&zbus::Connection, UnitError> {
        self.connection
            .get_or_try_init(|| async {
                let connection = zbus::Connection::system()
                    .await
                    .map_err(|e| UnitError::Unreachable(e.to_string()))?;
                // Without a subscription systemd does not send JobRemoved. It is per client and
                // a second Subscribe fails with AlreadySubscribed, so it happens once, here.
                let manager = ManagerProxy::new(&connection)
                    .await
                    .map_err(|e| UnitError::Unreachable(e.to_string()))?;
                manager
                    .subscribe()
                    .await
                    .map_err(|e| UnitError::Unreachable(e.to_string()))?;
                Ok(connection)
            })
            .await
    }

    async fn manager(&self, unit: &str) -> Result<ManagerProxy<'_>, UnitError> {
        ManagerProxy::new(self.connection().await?)
            .await
            .map_err(|e| bus(unit, e))
    }
}

fn bus(unit: &str, e: zbus::Error) -> UnitError {
    UnitError::Bus {
        unit: unit.to_owned(),
        message: match &e {
            zbus::Error::MethodError(name, Some(detail), _) => format!("{name}: {detail}"),
            _ => e.to_string(),
        },
    }
}

impl ServiceManager for Systemd {
    async fn restart(&self, unit: &str) -> Result<(), UnitError> {
        let manager = self.manager(unit).await?;
        // Listen before asking, or a fast job could finish before we are listening.
        let mut removed = manager
            .receive_job_removed()
            .await
            .map_err(|e| bus(unit, e))?;
        // A deploy is a deliberate restart, like an operator's `systemctl reset-failed` then
        // `restart`: clear the unit's failed state and its start rate limit first, or a few
        // deploys in quick succession (5 starts in 10 s by default) get the restart refused and
        // the revert's restart with it, leaving the app down. Not loaded or not failed: nothing
        // to reset, which is not an error here.
        let _ = manager.reset_failed_unit(unit).await;
        let job = manager
            .restart_unit(unit, "replace")
            .await
            .map_err(|e| bus(unit, e))?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if *args.job() == job {
                    return Some(args.result().clone());
                }
            }
            None
        };
        match tokio::time::timeout(self.job_timeout, wait).await {
            Err(_) => Err(UnitError::JobTimeout {
                unit: unit.to_owned(),
                seconds: self.job_timeout.as_secs(),
            }),
            Ok(None) => Err(UnitError::Bus {
                unit: unit.to_owned(),
                message: "the bus closed while waiting for the restart job".into(),
            }),
            Ok(Some(result)) if result == "done" => Ok(()),
            Ok(Some(result)) => Err(UnitError::JobFailed {
                unit: unit.to_owned(),
                result,
            }),
        }
    }

    async fn is_failed(&self, unit: &str) -> Result<bool, UnitError> {
        let proxy = self.unit(unit).await?;
        let state = proxy.active_state().await.map_err(|e| bus(unit, e))?;
        Ok(state == "failed")
    }
}

impl Systemd {
    /// `loaded`, `not-found`, `bad-setting`, …: whether systemd knows the unit (`drover doctor`).
    pub async fn load_state(&self, unit: &str) -> Result<String, UnitError> {
        let proxy = self.unit(unit).await?;
        proxy.load_state().await.map_err(|e| bus(unit, e))
    }

    async fn unit(&self, unit: &str) -> Result<UnitProxy<'_>, UnitError> {
        let manager = self.manager(unit).await?;
        let path = manager.load_unit(unit).await.map_err(|e| bus(unit, e))?;
        UnitProxy::builder(self.connection().await?)
            .path(path)
            // Properties must be read fresh on every check, not from a cache.
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| bus(unit, e))
    }
}
