//! fieldgate: an edge gateway from field protocols to the cloud.
#![forbid(unsafe_code)]

pub mod config;
pub mod queue;
