//! The commands that reconcile: `run` (the daemon's loop), `once` and `rollback`, with the
//! real clients.

use std::process::ExitCode;

use crate::aws::{self, S3Store, SsmSource};
use crate::config::Config;
use crate::health::HttpProbe;
use crate::reconcile::{Agent, Mode, Outcome, Outside};
use crate::systemd::Systemd;
use crate::{notify, plan};

use super::FAILED;

type RealAgent = Agent<(
    SsmSource,
    S3Store,
    Systemd,
    HttpProbe,
    aws::Elb,
    aws::Scaling,
)>;

async fn build_agent(config: Config, mode: Mode) -> Result<RealAgent, String> {
    let sdk = aws::sdk_config(&config.aws).await;
    let source = SsmSource::polling(&sdk, &config.source.parameter);
    let store = S3Store::new(&sdk, &config.aws, &config.artifact.bucket);
    let services = Systemd::new(config.service.restart_timeout);
    let probe = match &config.health.url {
        Some(url) => {
            let per_request = config
                .health
                .interval
                .max(std::time::Duration::from_secs(2));
            Some(HttpProbe::new(url, per_request)?)
        }
        None => None,
    };
    let webhook = (config.notify.webhook_url.as_deref())
        .map(crate::webhook::Webhook::new)
        .transpose()?;
    // Asked only when a rollout or [fleet] needs the instance id.
    let imds = aws::imds_client(&sdk, &config.aws)
        .map_err(|e| crate::fleet::IdentityError::Unreachable(e).to_string())?;
    let identity = aws::identity_from(imds.clone());
    let balancer = (config.loadbalancer.is_some()).then(|| aws::Elb::new(&sdk));
    let scaling = (config.autoscaling.as_ref())
        .map(|autoscaling| aws::Scaling::new(&sdk, imds, autoscaling.group.clone()));
    let outside = Outside {
        source,
        store,
        services,
        probe,
        balancer,
        scaling,
    };
    let agent = Agent::new(config, outside, mode).with_identity(identity);
    Ok(match webhook {
        Some(webhook) => agent.with_webhook(webhook),
        None => agent,
    })
}

/// How long `drover once` waits for webhook notices still being sent before it exits.
const NOTICE_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

pub(super) async fn once(config: Config) -> Result<ExitCode, String> {
    let mut agent = build_agent(config, Mode::Once).await?;
    let outcome = agent.pass().await;
    agent.flush_notices(NOTICE_GRACE).await;
    Ok(if outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    })
}

pub(super) async fn rollback(config: Config) -> Result<ExitCode, String> {
    let mut agent = build_agent(config, Mode::Once).await?;
    let healthy = agent.rollback().await.map_err(|e| e.to_string())?;
    agent.flush_notices(NOTICE_GRACE).await;
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    })
}

pub(super) async fn run(config: Config) -> Result<ExitCode, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let poll_interval = config.source.poll_interval;
    let mut agent = build_agent(config, Mode::Daemon).await?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    if let Some(every) = notify::watchdog_interval() {
        tokio::spawn(async move {
            loop {
                notify::watchdog();
                tokio::time::sleep(every).await;
            }
        });
    }
    notify::ready();
    notify::status("polling");
    // An instance already running a release joins the fleet's polling at a random point of the
    // interval, so that restarting drover everywhere at once is not a burst on the API; a fresh
    // one, or one with a switch to undo, starts at once.
    if agent.settled() {
        let first = poll_interval.mul_f64(plan::random_unit());
        tokio::select! {
            _ = tokio::time::sleep(first) => {}
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
            _ = int.recv() => return Ok(ExitCode::SUCCESS),
        }
    }
    let mut backoff = plan::Backoff::default();
    let mut first = true;
    loop {
        // A stop request cancels a pass midway: the switch-in-flight record brings the next
        // start back to a good release.
        let outcome = tokio::select! {
            o = agent.pass() => o,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        // Start-up (the config, the SDK's set-up, the first pass) is done: what it mapped goes
        // back, as after each deploy (memory.rs).
        if std::mem::take(&mut first) {
            crate::memory::give_back();
        }
        notify::status(&agent.status_line(outcome));
        backoff.record(match outcome {
            Outcome::Throttled => plan::Poll::Throttled,
            Outcome::Retry => plan::Poll::Failed,
            _ => plan::Poll::Answered,
        });
        let delay = backoff.delay(poll_interval, plan::random_unit());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notify::stopping();
    agent.flush_notices(std::time::Duration::from_secs(2)).await;
    Ok(ExitCode::SUCCESS)
}
