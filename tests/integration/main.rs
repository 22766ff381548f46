//! drainer's integration tests, compiled into one binary: real `drainer` processes, a real
//! S3-protocol server (s3s), real SQLite and PostgreSQL, real signals.

mod abuse;
mod bad_input;
mod chart;
mod compression;
mod deploy;
mod encryption;
mod engine;
mod hardening;
mod kube_abuse;
mod kube_admission;
mod kube_drains;
mod kube_e2e;
mod kube_encryption;
mod kube_env;
mod kube_ha;
mod kube_mode;
mod kube_movers;
mod kube_namespace_life;
mod kube_operators;
mod kube_pod_security;
mod kube_restore;
mod kube_runtime;
mod kube_supervision;
mod kube_sweeps;
mod kube_tls;
mod kubectl_plugin;
mod ledger;
mod lifecycle;
mod monitoring;
mod replicas;
mod restore;
mod retention;
mod service;
mod support;
mod tls;
