//! Administration of Khoi: the audited operations ([`service`]), the JSON
//! API over them ([`api`]) used by the CLI on the control socket and by the
//! web page, the web page itself ([`web`]), the nightly reset
//! ([`schedule`]), seat activity and Prometheus metrics.

pub mod activity;
pub mod api;
pub mod auth;
pub mod i18n;
pub mod metrics;
pub mod schedule;
pub mod service;
pub mod staging;
pub mod web;

pub use activity::{Activity, IoMeter, IoOp, SeatState};
pub use metrics::Metrics;
pub use service::{Actor, ExportName, Opened, Service, ServiceConfig, ServiceError};
