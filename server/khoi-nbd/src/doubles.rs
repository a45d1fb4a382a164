//! A resolver over a fixed list of named devices: NBD's own test double,
//! also what the `memserve` example serves. The devices tests put behind it
//! (`MemDisk`, `FileDisk`, `Spy`) are the doubles every crate shares, in
//! `khoi_block::testing` (a dev-dependency feature, so they never reach the
//! server binary).

use std::sync::Arc;

use khoi_block::BlockDevice;

/// A resolver over a fixed list of named devices.
#[derive(Debug, Default)]
pub struct StaticExports {
    exports: Vec<(crate::ExportInfo, khoi_block::Checked)>,
}

impl StaticExports {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, name: &str, description: &str, dev: Arc<dyn BlockDevice>) -> Self {
        self.exports.push((
            crate::ExportInfo {
                name: name.to_owned(),
                description: description.to_owned(),
            },
            khoi_block::Checked::new(dev),
        ));
        self
    }
}

impl crate::ExportResolver for StaticExports {
    fn list(&self) -> Vec<crate::ExportInfo> {
        self.exports.iter().map(|(i, _)| i.clone()).collect()
    }

    fn open(&self, name: &str) -> std::result::Result<khoi_block::Checked, crate::OpenError> {
        self.exports
            .iter()
            .find(|(i, _)| i.name == name)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| crate::OpenError::NotFound(format!("no export named {name:?}")))
    }
}
