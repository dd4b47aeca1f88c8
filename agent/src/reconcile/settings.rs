//! `[environment]` as part of the reconcile loop: read the settings each pass, put a changed
//! file in place for a deploy (or on its own, when only the settings changed), and take it back
//! through the same health gate and revert as a new version.
//!
//! The last good file is kept beside the live one as `{file}.good` (mode 0600, like the file):
//! a revert, or a restart after a crash with a new file in place, copies it back.

use std::path::PathBuf;

use super::ending::Ending;
use super::{Agent, Error, Outcome, Parts};
use crate::environment::{self, Settings};
use crate::events::{emit, Event, Fields};
use crate::fsutil::{IoContext, PathError};
use crate::source::DesiredSource;
use crate::state::{Request, State, Verdict};
use crate::version::Version;

impl<P: Parts> Agent<P> {
    /// 1, continued: the settings under `[environment] path`, kept for this pass.
    pub(super) async fn read_settings(&mut self) -> Result<(), Outcome> {
        let Some(env) = &self.config.environment else {
            return Ok(());
        };
        match self.source.read_path(&env.path).await {
            Ok(parameters) => {
                let settings = Settings::from_parameters(&env.path, parameters);
                if self.settings.as_ref().map(|s| &s.skipped) != Some(&settings.skipped) {
                    for (name, why) in &settings.skipped {
                        tracing::warn!(target: "drover", event = crate::events::Event::VariablesRefused.as_str(), parameter = %name,
                            "Leaving parameter {name} out of the environment file: {why}");
                    }
                }
                // Once when the refused names change (and on the first read), not every pass.
                let refused_before = self.settings.as_ref().map(|s| &s.refused);
                if !settings.refused.is_empty() && refused_before != Some(&settings.refused) {
                    let names = settings.refused.join(",");
                    emit(
                        Event::VariablesRefused,
                        &Fields {
                            variables: Some(&names),
                            ..Fields::default()
                        },
                        &format!(
                            "Leaving {names} out of the app's environment file and its hooks: \
                             the dynamic loader, the C library or a shell acts on these names"
                        ),
                    );
                }
                self.settings = Some(settings);
                Ok(())
            }
            Err(e) => {
                let error = e.to_string();
                emit(
                    Event::PollFailed,
                    &Fields {
                        error: Some(&error),
                        ..Fields::default()
                    },
                    &format!("Reading the app's environment failed: {error}"),
                );
                Err(match e {
                    crate::source::SourceError::Throttled { .. } => Outcome::Throttled,
                    _ => Outcome::Retry,
                })
            }
        }
    }

    /// The new file's text, when the settings read this pass differ from the file in place.
    pub(super) fn environment_change(&self) -> Option<String> {
        let (env, settings) = (self.config.environment.as_ref()?, self.settings.as_ref()?);
        let text = settings.render();
        let current = std::fs::read(&env.file).ok();
        (current.as_deref() != Some(text.as_bytes())).then_some(text)
    }

    /// Writes the file; the caller has saved `environment_pending` first. Without
    /// `[environment]` there is no file ([`Agent::environment_change`] has no text either).
    pub(super) fn write_environment(&self, text: &str) -> Result<(), PathError> {
        match &self.config.environment {
            Some(env) => environment::write(&env.file, text.as_bytes()),
            None => Ok(()),
        }
    }

    /// Puts the last good file back, or removes the file when there never was a good one.
    pub(super) fn restore_environment(&self) -> Result<(), PathError> {
        let Some(env) = &self.config.environment else {
            return Ok(());
        };
        let good = good_copy(&env.file);
        match std::fs::read(&good) {
            Ok(bytes) => environment::write(&env.file, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::remove_file(&env.file) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(e).at("remove", &env.file)
                    }
                    _ => Ok(()),
                }
            }
            Err(e) => Err(e).at("read", &good),
        }
    }

    /// After a commit: the file in place becomes the last good one.
    pub(super) fn commit_environment(&self, state: &mut State) {
        let (Some(env), Some(settings)) = (&self.config.environment, &self.settings) else {
            return;
        };
        if state.environment_pending {
            let copied = std::fs::read(&env.file)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    environment::write(&good_copy(&env.file), &b).map_err(|e| e.to_string())
                });
            if let Err(e) = copied {
                tracing::error!(target: "drover", event = crate::events::Event::EnvironmentFailed.as_str(), error = %e, "cannot keep a copy of the good environment file");
            }
        }
        state.environment_committed(settings.remembered());
    }

    /// The version is in sync, but the settings changed: restart the units for them, through
    /// the health gate and the validate hook, and put the last good file back if they fail.
    /// `None` when there is nothing to do.
    pub(super) async fn apply_environment(
        &mut self,
        state: &mut State,
        version: &Version,
    ) -> Option<Outcome> {
        let text = self.environment_change()?;
        let settings = self.settings.as_ref()?;
        let fingerprint = settings.fingerprint();
        let before = Settings::from_names(state.environment.as_deref().unwrap_or_default());
        let changed = environment::changed_names(&before, settings).join(",");
        if state.environment_failed.as_deref() == Some(fingerprint.as_str()) {
            if self.reported_environment.as_deref() != Some(fingerprint.as_str()) {
                emit(
                    Event::SkippedFailedVersion,
                    &Fields {
                        version: Some(version.as_str()),
                        ..Fields::default()
                    },
                    "Not retrying the app's environment: these settings failed before; change a parameter to retry",
                );
                self.reported_environment = Some(fingerprint);
            }
            return None;
        }
        let fields = Fields {
            version: Some(version.as_str()),
            variables: Some(&changed),
            ..Fields::default()
        };
        emit(
            Event::EnvironmentChanged,
            &fields,
            &format!("The app's environment changed ({changed}); restarting {version} for it"),
        );
        let applied = state.applied.clone().unwrap_or(Request {
            value: version.to_string(),
            parameter_version: 0,
        });
        if let Err(outcome) = self.take_lease(&applied, &fields).await {
            return Some(outcome);
        }
        state.environment_staged();
        if let Err(e) = self.save(state) {
            tracing::error!(target: "drover", event = crate::events::Event::StateFailed.as_str(), error = %e, "cannot save state before writing the environment file");
            return Some(Outcome::Retry);
        }
        if let Err(e) = self.write_environment(&text) {
            let error = e.to_string();
            emit(
                Event::PollFailed,
                &fields.with_error(&error),
                &format!("Writing the environment file failed: {error}"),
            );
            state.environment_put_back();
            let _ = self.save(state);
            return Some(Outcome::Retry);
        }
        crate::failpoint::hit("after_environment_written");
        let gate = (self.activate_and_validate(state, version.as_str(), &fields)).await;
        Some(match gate {
            Ok(()) => {
                self.commit_environment(state);
                let ending = Ending {
                    result: Verdict::EnvironmentApplied,
                    version,
                    request: state.applied.clone(),
                    error: None,
                    message: format!("Applied the app's new environment ({changed}) to {version}"),
                };
                self.finish(state, ending, &fields)
            }
            Err(error) => {
                state.environment_rejected(fingerprint);
                self.revert_environment(state, version, &fields, error)
                    .await
            }
        })
    }

    async fn revert_environment(
        &mut self,
        state: &mut State,
        version: &Version,
        fields: &Fields<'_>,
        error: Error,
    ) -> Outcome {
        let error = error.to_string();
        let result = match self.restore_environment() {
            Ok(()) => self
                .activate(state, version.as_str(), fields)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!(
                "cannot put the last good environment file back: {e}"
            )),
        };
        let ending = match result {
            Ok(()) => Ending {
                result: Verdict::EnvironmentReverted,
                version,
                request: state.applied.clone(),
                message: format!("Reverted the app's environment on {version}: {error}"),
                error: Some(error),
            },
            Err(e) => Ending {
                result: Verdict::RevertFailed,
                version,
                request: state.applied.clone(),
                error: Some(format!("{error}; with the last good environment: {e}")),
                message: format!(
                    "Reverted the app's environment on {version}, but it is not healthy either"
                ),
            },
        };
        self.finish(state, ending, fields)
    }
}

fn good_copy(file: &std::path::Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".good");
    PathBuf::from(name)
}
