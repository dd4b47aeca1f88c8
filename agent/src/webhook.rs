//! `[notify] webhook_url`: a JSON POST for each deploy outcome an operator wants to hear about
//! (`deployed`, `reverted`, `revert_failed`, and `deploy_aborted` by a pre-activate hook).
//!
//! The body carries a Slack-compatible `text` and the event's fields. Each notice is sent from
//! its own task, retried with a backoff, and never holds up or fails a deploy; `drover once` waits
//! a bounded time for the ones still in flight before it exits. The URL may hold a secret
//! (Slack's do), so messages name only its host.

use std::time::Duration;

use crate::events::{Event, Fields};

/// Attempts per notice, and the pause before each retry.
const BACKOFF: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(4),
];
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Webhook {
    client: reqwest::Client,
    url: String,
    /// Named in messages instead of the URL.
    host: String,
    instance: String,
    in_flight: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl Webhook {
    pub fn new(url: &str) -> Result<Self, String> {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .ok_or("notify.webhook_url: not a URL with a host")?;
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .map_err(|e| format!("notify.webhook_url: {e}"))?;
        Ok(Self {
            client,
            url: url.to_owned(),
            host,
            instance: instance_name(),
            in_flight: std::sync::Mutex::default(),
        })
    }

    /// Queues the notice for `event` and returns at once.
    pub fn send(&self, event: Event, fields: &Fields<'_>, message: &str) {
        let Ok(mut in_flight) = self.in_flight.lock() else {
            return;
        };
        while in_flight.try_join_next().is_some() {}
        let body = payload(event, fields, message, &self.instance).to_string();
        let (client, url, host) = (self.client.clone(), self.url.clone(), self.host.clone());
        in_flight.spawn(async move {
            let mut last = String::new();
            for (attempt, pause) in BACKOFF.iter().enumerate() {
                tokio::time::sleep(*pause).await;
                let request = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone());
                match request.send().await {
                    Ok(resp) if resp.status().is_success() => return,
                    Ok(resp) => {
                        let status = resp.status();
                        last = format!("HTTP {}", status.as_u16());
                        // A client error other than throttling will not get better.
                        if status.is_client_error() && status.as_u16() != 429 {
                            break;
                        }
                    }
                    Err(e) => last = plain_error(e),
                }
                tracing::debug!(target: "drover", event = crate::events::Event::Trace.as_str(), host = %host, attempt = attempt + 1, error = %last, "webhook attempt failed");
            }
            crate::events::emit(
                Event::NotifyFailed,
                &Fields {
                    error: Some(&last),
                    ..Fields::default()
                },
                &format!("Webhook notice of {} to {host} failed: {last}", event.as_str()),
            );
        });
    }

    /// Waits up to `within` for the notices still being sent.
    pub async fn flush(&self, within: Duration) {
        let Some(mut in_flight) = self
            .in_flight
            .lock()
            .ok()
            .map(|mut s| std::mem::take(&mut *s))
        else {
            return;
        };
        let _ = tokio::time::timeout(within, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
    }
}

/// reqwest's errors print the URL; this keeps the cause only.
fn plain_error(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        e.without_url().to_string()
    }
}

/// The JSON body: Slack's `text`, plus the event's fields for anything that reads JSON.
pub fn payload(
    event: Event,
    fields: &Fields<'_>,
    message: &str,
    instance: &str,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "text": format!("drover on {instance}: {message}"),
        "event": event.as_str(),
        "instance": instance,
    });
    let mut put = |key: &str, value: Option<serde_json::Value>| {
        if let Some(v) = value {
            body[key] = v;
        }
    };
    put("version", fields.version.map(Into::into));
    put("previous_version", fields.previous_version.map(Into::into));
    put(
        "parameter_version",
        fields.parameter_version.map(Into::into),
    );
    put("error", fields.error.map(Into::into));
    body
}

/// The host name, which on EC2 names the instance (`ip-10-0-1-23…` or the resource name).
fn instance_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_slack_text_plus_the_fields_that_apply() {
        let fields = Fields {
            version: Some("1.2.0"),
            previous_version: Some("1.1.0"),
            parameter_version: Some(7),
            error: Some("health check timed out"),
            ..Fields::default()
        };
        let body = payload(Event::Reverted, &fields, "Reverted to 1.1.0", "web-1");
        assert_eq!(body["text"], "drover on web-1: Reverted to 1.1.0");
        assert_eq!(body["event"], "reverted");
        assert_eq!(body["version"], "1.2.0");
        assert_eq!(body["previous_version"], "1.1.0");
        assert_eq!(body["parameter_version"], 7);
        assert_eq!(body["error"], "health check timed out");
        let bare = payload(Event::Deployed, &Fields::default(), "Deployed 1", "h");
        assert!(bare.get("version").is_none() && bare.get("error").is_none());
    }
}
