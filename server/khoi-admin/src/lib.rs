//! What an admin can do with Khoi, each operation audited: images, versions,
//! drafts and seats ([`service`]), the image gate ([`gate`]), accounts ([`users`]), the nightly reset
//! ([`schedule`]), staging images for import ([`staging`]), seat activity
//! ([`activity`]) and the metrics registry it feeds ([`metrics`]). The HTTP
//! front ends (web page, JSON API, control socket) are in `khoi-web`.

pub mod activity;
pub mod boot_times;
pub mod capture;
pub mod doctor;
pub mod gate;
pub mod metrics;
pub mod networks;
pub mod report;
pub mod schedule;
pub mod service;
pub mod staging;
pub mod users;

pub use activity::{Activity, IoMeter, IoOp, SeatState};
pub use boot_times::BootClock;
pub use metrics::Metrics;
pub use networks::BootNetwork;
pub use service::{Actor, ExportName, Opened, Service, ServiceConfig, ServiceError};
