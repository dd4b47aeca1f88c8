//! drover: a pull-based deployment agent for EC2.
//!
//! The library holds everything; `main.rs` only parses the command line and calls [`cli::main`].
//! Dependencies point one way: [`reconcile`] drives the deployment flow through the small traits
//! in [`source`], [`store`], [`service`] and [`health`]; only [`aws`], [`systemd`] and [`cli`]
//! name real clients.

pub mod aws;
pub mod balancer;
pub mod cli;
pub mod config;
pub mod digest;
pub mod doctor;
pub mod environment;
pub mod events;
pub mod failpoint;
pub mod fetch;
pub mod fleet;
pub mod fleet_history;
pub mod fsutil;
pub mod health;
pub mod history;
pub mod hooks;
pub mod lease;
pub mod lifecycle;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod operator;
pub mod owner;
pub mod pause;
pub mod plan;
pub mod reach;
pub mod reconcile;
pub mod releases;
pub mod rfc3339;
pub mod rollout;
pub mod sandbox;
pub mod service;
pub mod signature;
pub mod source;
pub mod state;
pub mod store;
pub mod systemd;
pub mod tarheader;
pub mod tree;
pub mod trusted;
pub mod units;
pub mod unpack;
pub mod userdata;
pub mod value;
pub mod version;
pub mod webhook;
