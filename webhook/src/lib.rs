//! `taskrun-webhook`: the validating and mutating admission webhook for TaskRuns (DESIGN
//! section 4). The binary is `main.rs`; the library lets the fuzz targets and the benchmarks
//! drive the same admission code.

pub mod admission;
mod admitted;
mod budget;
pub mod config;
mod idle;
pub mod index;
pub mod metrics;
pub mod mutate;
mod routes;
pub mod server;
mod slots;
pub mod tls;
mod workers;
