//! `/etc/drover/config.toml` as written: serde mirrors the file, rejects unknown keys, and
//! leaves defaults and checks to [`super::sections`].

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub source: Source,
    pub artifact: Option<Artifact>,
    #[serde(default)]
    pub release: Release,
    #[serde(default)]
    pub service: Service,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub aws: Aws,
    #[serde(default)]
    pub agent: Agent,
    #[serde(default)]
    pub hooks: Hooks,
    pub environment: Option<Environment>,
    #[serde(default)]
    pub notify: Notify,
    #[serde(default)]
    pub fleet: Fleet,
    pub loadbalancer: Option<LoadBalancer>,
    pub autoscaling: Option<AutoScaling>,
    #[serde(default)]
    pub metrics: Metrics,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub textfile: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AutoScaling {
    pub launch_hook: Option<String>,
    pub terminate_hook: Option<String>,
    pub group: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    pub target_groups: Option<Vec<String>>,
    pub port: Option<i64>,
    pub drain_timeout: Option<String>,
    pub healthy_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    pub status_prefix: Option<String>,
    pub max_failures: Option<i64>,
    pub max_in_flight: Option<CountOrShare>,
    pub lease_ttl: Option<String>,
}

/// A number of instances, or a share of the fleet as `"25%"`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum CountOrShare {
    Count(i64),
    Share(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    pub timeout: Option<String>,
    pub user: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    pub path: Option<String>,
    pub file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    pub webhook_url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub parameter: Option<String>,
    pub poll_interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub bucket: Option<String>,
    pub key: Option<String>,
    pub trusted_keys: Option<Vec<String>>,
    pub max_size: Option<String>,
    pub max_unpacked_size: Option<String>,
    pub max_entries: Option<u64>,
    pub download_timeout: Option<String>,
    pub download_connections: Option<i64>,
    pub download_part_size: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub root: Option<String>,
    pub keep: Option<i64>,
    pub owner: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub units: Option<Vec<String>>,
    pub restart_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub url: Option<String>,
    pub timeout: Option<String>,
    pub interval: Option<String>,
    pub successes: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Aws {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub metadata_endpoint_url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub state_dir: Option<String>,
}
