//! Administration of Khoi: the audited operations ([`service`]) and the JSON
//! API over them ([`api`]) that the CLI (and later the web page) use.

pub mod api;
pub mod service;

pub use service::{Actor, ExportName, Opened, Service, ServiceConfig, ServiceError};
