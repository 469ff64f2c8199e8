//! `taskrun-webhook`: the validating and mutating admission webhook for TaskRuns.

mod admission;
mod config;
mod index;
mod metrics;
mod mutate;

fn main() {}
