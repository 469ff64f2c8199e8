//! `kubectl-taskrun`, a kubectl plugin for TaskRuns: context updates through server-side
//! apply, and migration of legacy Helm task releases. The binary is `main.rs`; the library
//! lets the fuzz targets drive the same release decoding.

pub mod args;
pub mod connect;
pub mod context_add;
pub mod error;
pub mod migrate;
pub mod output;
