//! fieldgate: an edge gateway from field protocols to the cloud.
//!
//! Readings flow one way: adapters ([`fieldgate_adapter::Adapter`]) produce them into a
//! bounded channel; the [`pipeline`]'s writer commits them in batches to the durable
//! [`queue`]; one [`uplink::forwarder`] per configured uplink drains the queue and
//! acknowledges what the far side has. [`config`] turns a TOML file into the typed
//! [`config::Config`] the pipeline is built from; [`bench`](mod@bench) measures it all.

// Unsafe code is denied in this crate except in `clock::sys`, which calls adjtimex(2) to read
// the kernel's clock-synchronization state (no safe wrapper exists); see the SAFETY comment there.
#![deny(unsafe_code)]

pub use fieldgate_adapter::backoff;
pub mod bench;
pub mod broker;
pub mod clock;
pub mod command;
pub mod config;
pub mod demo;
pub mod httpd;
pub mod payload;
pub mod pipeline;
pub mod queue;
pub mod rules;
pub mod status;
pub mod throttle;
pub mod uplink;
pub mod watchdog;
