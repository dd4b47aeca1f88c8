//! The real [`ServiceManager`] and [`Confinement`]: systemd's manager API on the system bus
//! (`DBUS_SYSTEM_BUS_ADDRESS` is honoured), as `systemctl restart` and `systemd-run --scope` would
//! use it, minus the process.

use std::time::Duration;

use futures_util::StreamExt;
use zbus::{OwnedObjectPath, Variant};

use crate::service::{Confinement, ServiceManager, UnitError};

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Variant<'_>)],
        aux: &[(&str, &[(&str, Variant<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    #[allow(clippy::type_complexity)]
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<
        Vec<(
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        )>,
    >;
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
        let removed = manager
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
        self.finished(unit, "restart", removed, job).await
    }

    async fn is_failed(&self, unit: &str) -> Result<bool, UnitError> {
        let proxy = self.unit(unit).await?;
        let state = proxy.active_state().await.map_err(|e| bus(unit, e))?;
        Ok(state == "failed")
    }
}

impl Confinement for Systemd {
    async fn confine(&self, scope: &str, description: &str, pid: u32) -> Result<(), UnitError> {
        let manager = self.manager(scope).await?;
        let mut properties = vec![
            ("Description", Variant::from(description)),
            ("PIDs", Variant::from(vec![pid])),
            // Gone from systemd's memory once it is over, whatever the hook's end.
            ("CollectMode", Variant::from("inactive-or-failed")),
        ];
        // Stopping drover (or its unit going down) stops its hooks, as when they ran in its
        // own cgroup.
        let own = std::fs::read_to_string("/proc/self/cgroup").ok();
        if let Some(service) = own.as_deref().and_then(own_service) {
            properties.push(("BindsTo", Variant::from(vec![service])));
        }
        let removed = manager
            .receive_job_removed()
            .await
            .map_err(|e| bus(scope, e))?;
        let job = manager
            .start_transient_unit(scope, "fail", &properties, &[])
            .await
            .map_err(|e| bus(scope, e))?;
        self.finished(scope, "start", removed, job).await
    }

    async fn kill_all(&self, scope: &str) -> Result<(), UnitError> {
        let manager = self.manager(scope).await?;
        // SIGKILL at once, not the stop's SIGTERM and a 90 s wait for what ignores it; systemd
        // goes on signalling until no new process turns up in the scope.
        match manager.kill_unit(scope, "all", libc::SIGKILL).await {
            Err(e) if !gone(&e) => return Err(bus(scope, e)),
            _ => {}
        }
        // The stop job ends once the scope's cgroup is empty.
        let removed = manager
            .receive_job_removed()
            .await
            .map_err(|e| bus(scope, e))?;
        match manager.stop_unit(scope, "replace").await {
            Ok(job) => self.finished(scope, "stop", removed, job).await,
            Err(e) if gone(&e) => Ok(()),
            Err(e) => Err(bus(scope, e)),
        }
    }

    async fn scopes(&self, pattern: &str) -> Result<Vec<String>, UnitError> {
        self.scopes_matching(pattern).await
    }
}

impl Systemd {
    async fn scopes_matching(&self, pattern: &str) -> Result<Vec<String>, UnitError> {
        let manager = self.manager(pattern).await?;
        let units =
            (manager.list_units_by_patterns(&[], &[pattern]).await).map_err(|e| bus(pattern, e))?;
        Ok(units.into_iter().map(|unit| unit.0).collect())
    }
}

/// The scope emptied and was collected, or had nothing left to signal.
fn gone(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _)
        if matches!(name.as_str(), "org.freedesktop.systemd1.NoSuchUnit"
            | "org.freedesktop.systemd1.NoSuchProcess"))
}

/// The service drover runs as, from `/proc/self/cgroup` (`0::/system.slice/drover.service`);
/// `None` when it runs from a session or a scope.
fn own_service(cgroups: &str) -> Option<&str> {
    cgroups
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .filter_map(|path| path.rsplit('/').next())
        .find(|unit| unit.ends_with(".service"))
}

impl Systemd {
    /// Waits for `job` on `unit` to be removed, with `removed` subscribed before it was asked
    /// for (a fast job can finish before the call returns); `done` is success.
    async fn finished(
        &self,
        unit: &str,
        kind: &'static str,
        mut removed: JobRemovedStream,
        job: OwnedObjectPath,
    ) -> Result<(), UnitError> {
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
                job: kind,
                seconds: self.job_timeout.as_secs(),
            }),
            Ok(None) => Err(UnitError::Bus {
                unit: unit.to_owned(),
                message: format!("the bus closed while waiting for the {kind} job"),
            }),
            Ok(Some(result)) if result == "done" => Ok(()),
            Ok(Some(result)) => Err(UnitError::JobFailed {
                unit: unit.to_owned(),
                job: kind,
                result,
            }),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_service_drover_runs_as() {
        assert_eq!(
            own_service("0::/system.slice/drover.service\n"),
            Some("drover.service")
        );
        // cgroups v1 and v2 side by side (hybrid).
        let hybrid = "12:pids:/system.slice/drover.service\n1:name=systemd:/system.slice/drover.service\n0::/system.slice/drover.service\n";
        assert_eq!(own_service(hybrid), Some("drover.service"));
        assert_eq!(
            own_service("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
        assert_eq!(own_service("0::/\n"), None);
        assert_eq!(own_service(""), None);
    }
}
