//! Why a step of a pass stopped, typed up to where it is reported: the message is made once,
//! by `Display`, when the journal and the state get it. What the pass does about it is
//! [`Error::disposition`], the one rule of whose fault a failure is (for a fetch, it asks
//! [`FetchFailure::disposition`]).

use crate::balancer::BalancerError;
use crate::fetch::{Disposition, FetchFailure};
use crate::fleet::IdentityError;
use crate::fsutil::PathError;
use crate::health::HealthError;
use crate::hooks::HookError;
use crate::service::UnitError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Steps 2 and 3: no release came of the artifact.
    #[error(transparent)]
    Fetch(#[from] FetchFailure),
    /// Step 5: a unit's restart job did not finish with `done`.
    #[error(transparent)]
    Restart(#[from] UnitError),
    /// Step 6: the health gate.
    #[error(transparent)]
    Health(#[from] HealthError),
    /// A release's hook ran and failed, or could not be run.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// A release's hook has nobody it may run as.
    #[error(transparent)]
    HookUser(#[from] HookUserError),
    /// The load balancer: a call failed, or it did not find the release healthy.
    #[error(transparent)]
    Balancer(#[from] BalancerError),
    /// The instance id the load balancer knows the instance by.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// `state.json` cannot be written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The release root, the state directory or the app's environment file.
    #[error(transparent)]
    Disk(#[from] PathError),
    /// `drover rollback` without a previous good release.
    #[error("no previous good release to roll back to")]
    NothingToRollBack,
    /// `drover rollback` to a previous release that was removed from disk.
    #[error("previous release {0} is no longer on disk")]
    PreviousGone(String),
}

impl crate::reach::Fix for Error {
    fn fix(&self) -> Option<String> {
        match self {
            Error::Fetch(failure) => failure.fix(),
            _ => None,
        }
    }
}

impl Error {
    /// What the pass does about the error. Before the switch, `Reject` remembers the request
    /// as failed (the artifact is rejected, or the deploy aborted); after it, every error
    /// switches back, and the request is remembered as failed whatever the reason.
    pub fn disposition(&self) -> Disposition {
        match self {
            Error::Fetch(failure) => failure.disposition(),
            // The release's own doing: its units do not start, it is not healthy, its hook
            // fails, or it asks for a hook user that may not run hooks.
            Error::Restart(_) | Error::Health(_) | Error::Hook(_) | Error::HookUser(_) => {
                Disposition::Reject
            }
            Error::Balancer(BalancerError::NotHealthy { .. }) => Disposition::Reject,
            // This machine's, or an API's: the next pass tries again.
            Error::Balancer(BalancerError::Api { .. })
            | Error::Identity(_)
            | Error::State(_)
            | Error::Disk(_) => Disposition::Retry,
            // An operator's command, refused: nothing to retry.
            Error::NothingToRollBack | Error::PreviousGone(_) => Disposition::Reject,
        }
    }
}

/// Why a release's hook has nobody to run as. Checked at load too; again before each hook,
/// with the users as they are then.
#[derive(Debug, thiserror::Error)]
pub enum HookUserError {
    /// `[hooks] user` and `[release] owner` together break a rule of
    /// [`crate::config::check_hooks_user`].
    #[error("hooks.user: {0}")]
    Refused(String),
    /// The user is not in `/etc/passwd` (or the group not in `/etc/group`).
    #[error("hook user: {0}")]
    Unknown(String),
    #[error(
        "hook user {uid}:{gid} has group root (gid 0): a hook its owner can rewrite would run \
         with root's group; give hooks.user (or release.owner) another group"
    )]
    GroupRoot { uid: u32, gid: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a release does to itself is rejected; what the machine does is retried.
    #[test]
    fn the_release_is_rejected_and_the_machine_retried() {
        let unit = || "app.service".to_string();
        let disk = || PathError {
            op: "write",
            path: "/var/lib/drover/state.json".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        for rejected in [
            Error::Health(HealthError::UnitFailed(unit())),
            Error::Restart(UnitError::JobTimeout {
                unit: unit(),
                job: "restart",
                seconds: 90,
            }),
            Error::Hook(HookError::Timeout {
                hook: "pre-activate",
                seconds: 300,
            }),
            Error::HookUser(HookUserError::GroupRoot { uid: 1000, gid: 0 }),
        ] {
            assert_eq!(rejected.disposition(), Disposition::Reject, "{rejected}");
        }
        for retried in [Error::Disk(disk()), Error::State(StateError::Io(disk()))] {
            assert_eq!(retried.disposition(), Disposition::Retry, "{retried}");
        }
        let e = Error::HookUser(HookUserError::GroupRoot { uid: 1000, gid: 0 });
        assert!(
            e.to_string().starts_with("hook user 1000:0 has group root"),
            "{e}"
        );
    }
}
