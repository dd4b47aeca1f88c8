//! From the file as written ([`super::raw`]) to a checked [`Config`]: one function per section,
//! each applying its defaults and naming the key at fault.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw;
use super::{
    check_hooks_user, is_unit_name, spec_uid, AgentSection, Artifact, AutoScaling, Aws, Config,
    ConfigError, Environment, Fleet, Health, Hooks, LoadBalancer, Metrics, Notify, Release,
    Service, Source, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_UNPACKED_SIZE,
};
use crate::lease::MaxInFlight;
use crate::units::{parse_duration, parse_size};

pub(super) fn from_raw(raw: raw::File, path: &Path) -> Result<Config, ConfigError> {
    let c = Check { path };
    // In the file's order, so that the first key at fault is the one reported.
    let source = source(&c, raw.source)?;
    let artifact = artifact(&c, raw.artifact)?;
    let release = release(&c, raw.release)?;
    let service = service(&c, raw.service)?;
    let health = health(&c, raw.health)?;
    let aws = aws(&c, raw.aws)?;
    let fleet = fleet(&c, raw.fleet)?;
    let agent = agent(&c, raw.agent)?;
    let hooks = hooks(&c, raw.hooks, release.owner.as_deref())?;
    let environment = environment(&c, raw.environment, &agent.state_dir)?;
    let notify = notify(&c, raw.notify)?;
    let loadbalancer = raw
        .loadbalancer
        .map(|lb| loadbalancer(&c, lb))
        .transpose()?;
    let autoscaling = raw.autoscaling.map(|a| autoscaling(&c, a)).transpose()?;
    let metrics = metrics(&c, raw.metrics)?;
    Ok(Config {
        source,
        artifact,
        release,
        service,
        health,
        aws,
        agent,
        hooks,
        environment,
        notify,
        fleet,
        loadbalancer,
        autoscaling,
        metrics,
    })
}

/// The checks every section uses, with the file they are about.
struct Check<'a> {
    path: &'a Path,
}

impl Check<'_> {
    fn invalid(&self, key: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key,
            reason: reason.into(),
        }
    }

    fn duration(
        &self,
        key: &'static str,
        value: Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value.map(|v| parse_duration(&v)) {
            None => Ok(default),
            Some(Ok(d)) if d.is_zero() => Err(self.invalid(key, "must be greater than zero")),
            Some(Ok(d)) => Ok(d),
            Some(Err(e)) => Err(self.invalid(key, e)),
        }
    }

    fn size(
        &self,
        key: &'static str,
        value: Option<String>,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match value.map(|v| parse_size(&v)) {
            None => Ok(default),
            Some(Ok(0)) => Err(self.invalid(key, "must be greater than zero")),
            Some(Ok(n)) => Ok(n),
            Some(Err(e)) => Err(self.invalid(key, e)),
        }
    }

    /// A whole number in `range`, or `default` when unset.
    fn count(
        &self,
        key: &'static str,
        value: Option<i64>,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> Result<i64, ConfigError> {
        match value {
            None => Ok(default),
            Some(n) if range.contains(&n) => Ok(n),
            Some(n) => Err(self.invalid(
                key,
                format!("{n} is out of range {}..={}", range.start(), range.end()),
            )),
        }
    }

    /// An absolute path, normalized (`//`, `/./` and a trailing `/` dropped), never `/` itself
    /// and without `..`: drover.service's sandbox names these paths to systemd, which takes
    /// only normalized ones, and a `..` means whatever the symlinks before it say.
    fn absolute(&self, key: &'static str, path: PathBuf) -> Result<PathBuf, ConfigError> {
        use std::path::Component;
        if !path.is_absolute() {
            return Err(self.invalid(key, format!("{} is not an absolute path", path.display())));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(self.invalid(
                key,
                format!(
                    "{} has a \"..\" in it: write the path it stands for",
                    path.display()
                ),
            ));
        }
        let path: PathBuf = path.components().collect();
        if path.parent().is_none() {
            return Err(self.invalid(
                key,
                "is the root directory \"/\": name a directory of its own",
            ));
        }
        Ok(path)
    }
}

fn source(c: &Check, raw: raw::Source) -> Result<Source, ConfigError> {
    let parameter = raw
        .parameter
        .unwrap_or_else(|| "/app/current-version".into());
    if !parameter.starts_with('/') && parameter.contains('/') || parameter.is_empty() {
        return Err(c.invalid(
            "source.parameter",
            format!(
                "{parameter:?} is not a parameter name (use a full path like /app/current-version)"
            ),
        ));
    }
    Ok(Source {
        parameter,
        poll_interval: c.duration(
            "source.poll_interval",
            raw.poll_interval,
            Duration::from_secs(30),
        )?,
    })
}

fn artifact(c: &Check, raw: Option<raw::Artifact>) -> Result<Artifact, ConfigError> {
    let raw = raw.ok_or_else(|| c.invalid("artifact", "section is required"))?;
    let bucket = raw
        .bucket
        .ok_or_else(|| c.invalid("artifact.bucket", "is required"))?;
    if bucket.is_empty() || bucket.contains('/') {
        return Err(c.invalid(
            "artifact.bucket",
            format!("{bucket:?} is not a bucket name"),
        ));
    }
    let key = raw
        .key
        .unwrap_or_else(|| "releases/{version}.tar.gz".into());
    if !key.contains("{version}") {
        return Err(c.invalid("artifact.key", format!("{key:?} must contain {{version}}")));
    }
    if key.starts_with('/') {
        return Err(c.invalid("artifact.key", format!("{key:?} must not start with /")));
    }
    let mut trusted_keys = Vec::new();
    for (i, text) in raw.trusted_keys.unwrap_or_default().iter().enumerate() {
        let key = crate::signature::PublicKey::parse(text)
            .map_err(|e| c.invalid("artifact.trusted_keys", format!("key {}: {e}", i + 1)))?;
        trusted_keys.push(key);
    }
    Ok(Artifact {
        bucket,
        key,
        trusted_keys,
        max_size: c.size("artifact.max_size", raw.max_size, 2 << 30)?,
        max_unpacked_size: c.size(
            "artifact.max_unpacked_size",
            raw.max_unpacked_size,
            DEFAULT_MAX_UNPACKED_SIZE,
        )?,
        max_entries: match raw.max_entries {
            Some(0) => return Err(c.invalid("artifact.max_entries", "must be greater than zero")),
            Some(n) => n,
            None => DEFAULT_MAX_ENTRIES,
        },
        download_timeout: c.duration(
            "artifact.download_timeout",
            raw.download_timeout,
            Duration::from_secs(30 * 60),
        )?,
        download_connections: c.count(
            "artifact.download_connections",
            raw.download_connections,
            1..=64,
            8,
        )? as usize,
        download_part_size: match c.size(
            "artifact.download_part_size",
            raw.download_part_size,
            16 << 20,
        )? {
            n if (1 << 20..=1 << 30).contains(&n) => n,
            _ => {
                return Err(c.invalid(
                    "artifact.download_part_size",
                    "must be between 1MiB and 1GiB",
                ))
            }
        },
    })
}

fn release(c: &Check, raw: raw::Release) -> Result<Release, ConfigError> {
    let root = c.absolute(
        "release.root",
        PathBuf::from(raw.root.unwrap_or_else(|| "/opt/app".into())),
    )?;
    let keep = match raw.keep {
        None => 5,
        Some(k) if (2..=1000).contains(&k) => k as usize,
        Some(k) => {
            return Err(c.invalid(
                "release.keep",
                format!(
                "{k} is out of range: keep at least 2 (the current and the previous good release)"
            ),
            ))
        }
    };
    if let Some(spec) = &raw.owner {
        crate::owner::check_spec(spec).map_err(|e| c.invalid("release.owner", e))?;
    }
    Ok(Release {
        root,
        keep,
        owner: raw.owner,
    })
}

fn service(c: &Check, raw: raw::Service) -> Result<Service, ConfigError> {
    let units = raw.units.unwrap_or_else(|| vec!["app.service".into()]);
    if let Some(unit) = units.iter().find(|u| !is_unit_name(u)) {
        return Err(c.invalid(
            "service.units",
            format!("{unit:?} is not a systemd unit name"),
        ));
    }
    Ok(Service {
        units,
        restart_timeout: c.duration(
            "service.restart_timeout",
            raw.restart_timeout,
            Duration::from_secs(90),
        )?,
    })
}

fn health(c: &Check, raw: raw::Health) -> Result<Health, ConfigError> {
    if let Some(url) = &raw.url {
        if !(url.starts_with("http://")) {
            return Err(c.invalid(
                "health.url",
                format!("{url:?} must be an http:// URL (the check is meant for the local app)"),
            ));
        }
    }
    Ok(Health {
        url: raw.url,
        timeout: c.duration("health.timeout", raw.timeout, Duration::from_secs(60))?,
        interval: c.duration("health.interval", raw.interval, Duration::from_secs(1))?,
        successes: c.count("health.successes", raw.successes, 1..=1000, 3)? as u32,
    })
}

fn aws(c: &Check, raw: raw::Aws) -> Result<Aws, ConfigError> {
    if let Some(url) = &raw.endpoint_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(c.invalid("aws.endpoint_url", format!("{url:?} is not an http(s) URL")));
        }
    }
    if let Some(url) = &raw.metadata_endpoint_url {
        if !url.starts_with("http://") {
            return Err(c.invalid(
                "aws.metadata_endpoint_url",
                format!("{url:?} is not an http:// URL (IMDS speaks plain HTTP)"),
            ));
        }
    }
    Ok(Aws {
        region: raw.region,
        endpoint_url: raw.endpoint_url,
        metadata_endpoint_url: raw.metadata_endpoint_url,
    })
}

fn fleet(c: &Check, raw: raw::Fleet) -> Result<Fleet, ConfigError> {
    let status_prefix = raw.status_prefix.filter(|p| !p.is_empty());
    if let Some(prefix) = &status_prefix {
        if prefix.starts_with('/') || prefix.split('/').any(|part| part == "..") {
            return Err(c.invalid(
                "fleet.status_prefix",
                format!("{prefix:?} is not a key prefix (write it like drover/status/)"),
            ));
        }
    }
    let max_in_flight = match raw.max_in_flight {
        None => None,
        Some(raw::CountOrShare::Count(n)) => {
            Some(MaxInFlight::Count(
                c.count("fleet.max_in_flight", Some(n), 1..=1_000_000, 1)? as u32,
            ))
        }
        Some(raw::CountOrShare::Share(text)) => {
            let share = (text.strip_suffix('%'))
                .and_then(|p| p.trim().parse::<f64>().ok())
                .filter(|p| *p > 0.0 && *p <= 100.0)
                .ok_or_else(|| {
                    c.invalid(
                        "fleet.max_in_flight",
                        format!(
                            "{text:?} is neither a number of instances nor a share like \"25%\""
                        ),
                    )
                })?;
            Some(MaxInFlight::Fraction(share / 100.0))
        }
    };
    if max_in_flight.is_some() && status_prefix.is_none() {
        return Err(c.invalid(
            "fleet.max_in_flight",
            "needs fleet.status_prefix: the leases are objects under it",
        ));
    }
    Ok(Fleet {
        status_prefix,
        max_failures: c.count("fleet.max_failures", raw.max_failures, 1..=1_000_000, 1)? as u32,
        max_in_flight,
        lease_ttl: c.duration(
            "fleet.lease_ttl",
            raw.lease_ttl,
            Duration::from_secs(15 * 60),
        )?,
    })
}

fn loadbalancer(c: &Check, raw: raw::LoadBalancer) -> Result<LoadBalancer, ConfigError> {
    let target_groups = raw.target_groups.unwrap_or_default();
    if target_groups.is_empty() {
        return Err(c.invalid(
            "loadbalancer.target_groups",
            "name at least one target group ARN",
        ));
    }
    for arn in &target_groups {
        if !(arn.starts_with("arn:") && arn.contains(":targetgroup/")) {
            return Err(c.invalid(
                "loadbalancer.target_groups",
                format!("{arn:?} is not a target group ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)"),
            ));
        }
    }
    let port = match raw.port {
        None => None,
        Some(port) => Some(
            u16::try_from(port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| c.invalid("loadbalancer.port", format!("{port} is not a port")))?,
        ),
    };
    let optional = |key, value: Option<String>| -> Result<Option<Duration>, ConfigError> {
        value
            .map(|v| c.duration(key, Some(v), Duration::ZERO))
            .transpose()
    };
    Ok(LoadBalancer {
        target_groups,
        port,
        drain_timeout: optional("loadbalancer.drain_timeout", raw.drain_timeout)?,
        healthy_timeout: optional("loadbalancer.healthy_timeout", raw.healthy_timeout)?,
    })
}

/// Names as Auto Scaling allows them: 1 to 255 characters, no colon for a hook.
fn autoscaling(c: &Check, raw: raw::AutoScaling) -> Result<AutoScaling, ConfigError> {
    let name = |key: &'static str, value: Option<String>| match value {
        Some(v) if v.is_empty() || v.len() > 255 || v.chars().any(char::is_control) => {
            Err(c.invalid(key, format!("{v:?} is not a name Auto Scaling allows")))
        }
        other => Ok(other),
    };
    let hooks = AutoScaling {
        launch_hook: name("autoscaling.launch_hook", raw.launch_hook)?,
        terminate_hook: name("autoscaling.terminate_hook", raw.terminate_hook)?,
        group: name("autoscaling.group", raw.group)?,
    };
    if hooks.launch_hook.is_none() && hooks.terminate_hook.is_none() {
        return Err(c.invalid(
            "autoscaling",
            "name a launch_hook, a terminate_hook, or both",
        ));
    }
    Ok(hooks)
}

fn agent(c: &Check, raw: raw::Agent) -> Result<AgentSection, ConfigError> {
    let state_dir = c.absolute(
        "agent.state_dir",
        PathBuf::from(raw.state_dir.unwrap_or_else(|| "/var/lib/drover".into())),
    )?;
    Ok(AgentSection { state_dir })
}

fn hooks(c: &Check, raw: raw::Hooks, owner: Option<&str>) -> Result<Hooks, ConfigError> {
    let hooks = Hooks {
        timeout: c.duration("hooks.timeout", raw.timeout, Duration::from_secs(5 * 60))?,
        user: raw.user,
    };
    if let Some(spec) = &hooks.user {
        crate::owner::check_spec(spec).map_err(|e| c.invalid("hooks.user", e))?;
    }
    // Without this machine's users: root by name or number ([`super::Config::load`] checks
    // names too).
    check_hooks_user(hooks.user.as_deref(), owner, |spec| spec_uid(spec, ""))
        .map_err(|e| c.invalid("hooks.user", e))?;
    Ok(hooks)
}

fn environment(
    c: &Check,
    raw: Option<raw::Environment>,
    state_dir: &Path,
) -> Result<Option<Environment>, ConfigError> {
    let env = match raw {
        None => return Ok(None),
        Some(raw::Environment { path: None, file }) => {
            return match file {
                Some(_) => Err(c.invalid(
                    "environment.file",
                    "is set, but environment.path is not: set the path of the parameters",
                )),
                None => Ok(None),
            }
        }
        Some(env) => env,
    };
    let path = env.path.unwrap_or_default();
    if !path.starts_with('/') || path.len() < 2 || path.ends_with('/') {
        return Err(c.invalid(
            "environment.path",
            format!("{path:?} is not a parameter path (write it like /app/env)"),
        ));
    }
    let file = c.absolute(
        "environment.file",
        PathBuf::from(
            env.file
                .unwrap_or_else(|| state_dir.join("app.env").display().to_string()),
        ),
    )?;
    Ok(Some(Environment { path, file }))
}

fn notify(c: &Check, raw: raw::Notify) -> Result<Notify, ConfigError> {
    if let Some(url) = &raw.webhook_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(c.invalid("notify.webhook_url", "is not an http(s) URL"));
        }
    }
    Ok(Notify {
        webhook_url: raw.webhook_url,
    })
}

/// Whether the file's directory exists is left to each write: node_exporter may be installed
/// after drover, and until then a `metrics_failed` event says what is missing.
fn metrics(c: &Check, raw: raw::Metrics) -> Result<Metrics, ConfigError> {
    let Some(textfile) = raw.textfile else {
        return Ok(Metrics::default());
    };
    let textfile = c.absolute("metrics.textfile", PathBuf::from(textfile))?;
    let name = textfile.file_name().map(|n| n.to_string_lossy());
    if textfile.as_os_str().to_string_lossy().ends_with('/')
        || !name.is_some_and(|n| n.len() > ".prom".len() && n.ends_with(".prom"))
    {
        return Err(c.invalid(
            "metrics.textfile",
            format!(
                "{} is not a .prom file: node_exporter's textfile collector reads only those \
                 (write it like /var/lib/node_exporter/textfile_collector/drover.prom)",
                textfile.display()
            ),
        ));
    }
    Ok(Metrics {
        textfile: Some(textfile),
    })
}
