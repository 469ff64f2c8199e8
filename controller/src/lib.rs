//! taskrun-controller: reconciles TaskRuns into a ConfigMap and a Job per context version.
//!
//! A library so that the binary's `main` stays a few lines and the benchmark's minimal write
//! loop (`make bench`) writes the very objects the controller writes, from the same builders.

mod backoff;
mod cache;
pub mod config;
pub mod controller;
mod http;
pub mod job;
mod leader;
pub mod metrics;
mod outage;
mod reconcile;
mod relist;
mod starting;
pub mod status;
pub mod template;
pub mod template_check;
pub mod writes;
