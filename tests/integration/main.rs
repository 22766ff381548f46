//! drainer's integration tests, compiled into one binary: real `drainer` processes, a real
//! S3-protocol server (s3s), real SQLite and PostgreSQL, real signals.

mod bad_input;
mod engine;
mod kube_env;
mod kube_runtime;
mod ledger;
mod service;
mod support;
