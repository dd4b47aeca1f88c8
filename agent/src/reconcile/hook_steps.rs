//! Running a release's hooks (see [`crate::hooks`]) as steps of a deploy, with their output and
//! outcome in the journal under the deploy's fields.

use super::error::HookUserError;
use super::{Agent, Error, Parts};
use crate::events::{emit, Event, Fields};
use crate::hooks::{self, Context, Hook, Ran};
use crate::owner;

impl<P: Parts> Agent<P> {
    /// Runs `hook` from `version`'s release. `Err` carries the reason, already in the journal.
    pub(super) async fn run_hook(
        &self,
        hook: Hook,
        version: &str,
        fields: &Fields<'_>,
    ) -> Result<(), Error> {
        let name = hook.as_str();
        let fields = Fields {
            hook: Some(name),
            ..*fields
        };
        let failed = |error: Error| {
            let reason = error.to_string();
            emit(
                Event::HookFailed,
                &fields.with_error(&reason),
                &format!("The {name} hook of {version} failed: {reason}"),
            );
            Err(error)
        };
        // Checked at load too; again here, with the users as they are now.
        let (hooks_user, owner) = (
            self.config.hooks.user.as_deref(),
            self.config.release.owner.as_deref(),
        );
        let uid = |spec: &str| owner::lookup(spec).ok().map(|o| o.uid);
        if let Err(e) = crate::config::check_hooks_user(hooks_user, owner, uid) {
            return failed(HookUserError::Refused(e).into());
        }
        let spec = hooks_user.or(owner);
        let user = match spec.map(owner::lookup).transpose() {
            Ok(user) => user,
            Err(e) => return failed(HookUserError::Unknown(e).into()),
        };
        if let Some(user) = user.filter(|u| u.uid != 0 && u.gid == 0) {
            let (uid, gid) = (user.uid, user.gid);
            return failed(HookUserError::GroupRoot { uid, gid }.into());
        }
        // Settings go only to a hook that runs as someone other than root: whoever can write
        // the parameters must not reach root through the many variables interpreters act on
        // (PERL5OPT, PYTHONWARNINGS, NODE_OPTIONS, ...), which no list can close.
        let pairs = (self.settings.as_ref())
            .map(|s| s.pairs())
            .unwrap_or_default();
        let (environment, withheld) = match user.is_none_or(|u| u.uid == 0) {
            true => (Vec::new(), pairs),
            false => (pairs, Vec::new()),
        };
        let release_dir = self.layout.release_dir(version);
        let ctx = Context {
            release_dir: &release_dir,
            version,
            previous_version: fields.previous_version,
            user,
            timeout: self.config.hooks.timeout,
            environment: &environment,
        };
        let result = hooks::run(hook, &ctx, &self.services, |_, line| {
            emit(Event::HookOutput, &fields, line);
        })
        .await;
        if !withheld.is_empty() && !matches!(result, Ok(Ran::Absent)) {
            let names: Vec<&str> = withheld.iter().map(|(name, _)| name.as_str()).collect();
            emit(
                Event::VariablesRefused,
                &Fields {
                    variables: Some(&names.join(" ")),
                    ..fields
                },
                &format!(
                    "The {name} hook of {version} runs as root: the app's settings are not given \
                     to it (run hooks as the app's user with [hooks] user or [release] owner)"
                ),
            );
        }
        match result {
            Ok(Ran::Absent) => Ok(()),
            Ok(Ran::Passed(took)) => {
                emit(
                    Event::HookPassed,
                    &fields,
                    &format!(
                        "The {name} hook of {version} passed in {:.1} s",
                        took.as_secs_f64()
                    ),
                );
                Ok(())
            }
            Err(e) => failed(e.into()),
        }
    }
}
