//! Adapters that let the protocol servers find devices through the service
//! layer, so a seat opened over NBD or iSCSI follows the same version rules.

use std::sync::Arc;

use khoi_admin::{ExportName, Opened, Service, ServiceError};
use khoi_block::Checked;
use khoi_nbd::{ExportInfo, ExportResolver, OpenError};

#[derive(Debug)]
pub struct NbdExports {
    service: Arc<Service>,
}

impl NbdExports {
    pub fn new(service: Arc<Service>) -> Self {
        NbdExports { service }
    }
}

pub fn checked(opened: Opened) -> Checked {
    match opened {
        Opened::Overlay(o) => Checked::new(o),
        Opened::Version(v) => Checked::new(v),
    }
}

impl ExportResolver for NbdExports {
    fn list(&self) -> Vec<ExportInfo> {
        self.service
            .export_names()
            .into_iter()
            .map(|(name, description)| ExportInfo { name, description })
            .collect()
    }

    fn open(&self, name: &str) -> Result<Checked, OpenError> {
        let Some(export) = ExportName::parse(name) else {
            return Err(OpenError::NotFound(format!(
                "no export {name:?}; exports are seat/<seat>, image/<image>@<version> and draft/<image>"
            )));
        };
        match self.service.open_export(&export) {
            Ok(opened) => Ok(checked(opened)),
            Err(ServiceError::NotFound(m)) => Err(OpenError::NotFound(m)),
            Err(e) => {
                tracing::warn!(export = name, "cannot open export: {e}");
                Err(OpenError::Other(e.to_string()))
            }
        }
    }
}
