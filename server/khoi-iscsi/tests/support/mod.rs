//! A fixed resolver over `khoi_block::testing`'s doubles, shared by the
//! `memtarget` example and the integration tests (included with `#[path]`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use khoi_block::filters::{Delay, Fault, FaultError, FaultRule, OpKind};
use khoi_block::testing::{FileDisk, MemDisk};
use khoi_block::{BlockDevice, Checked};
use khoi_iscsi::{ChapSecret, Credential, IscsiEvent, LunIdentity, TargetAuth, TargetResolver};
use parking_lot::Mutex;

pub const OPEN: &str = "iqn.2025-01.vn.khoi:open";
pub const CHAP: &str = "iqn.2025-01.vn.khoi:chap";
pub const MUTUAL: &str = "iqn.2025-01.vn.khoi:mutual";
pub const BOUND: &str = "iqn.2025-01.vn.khoi:bound";
pub const FULL: &str = "iqn.2025-01.vn.khoi:full";
pub const READONLY: &str = "iqn.2025-01.vn.khoi:readonly";
/// A file behind a [`Delay`] the test tunes (see [`TestResolver::slow`]).
pub const SLOW: &str = "iqn.2025-01.vn.khoi:slow";

pub const CHAP_USER: &str = "seat01";
pub const CHAP_SECRET: &str = "seat01-secret-12";
pub const MUTUAL_USER: &str = "seat02";
pub const MUTUAL_SECRET: &str = "seat02-secret-34";
pub const TARGET_USER: &str = "khoi";
pub const TARGET_SECRET: &str = "khoi-target-secret";

/// Targets with fixed policies; each LU is opened once and shared by every
/// session to it.
pub struct TestResolver {
    pub auth: Vec<(String, TargetAuth)>,
    pub devices: Mutex<HashMap<String, Checked>>,
    pub dir: std::path::PathBuf,
    pub size: u64,
    pub events: Mutex<Vec<IscsiEvent>>,
    /// The delay filter of the [`SLOW`] target, once opened.
    pub slow: Mutex<Option<Arc<Delay>>>,
}

impl TestResolver {
    pub fn new(dir: &Path, size: u64) -> TestResolver {
        let auth = vec![
            (OPEN.to_owned(), TargetAuth::default()),
            (
                CHAP.to_owned(),
                TargetAuth {
                    chap: vec![Credential::one_way(ChapSecret::new(CHAP_USER, CHAP_SECRET))],
                    allowed_initiator: None,
                },
            ),
            (
                MUTUAL.to_owned(),
                TargetAuth {
                    chap: vec![Credential::mutual(
                        ChapSecret::new(MUTUAL_USER, MUTUAL_SECRET),
                        ChapSecret::new(TARGET_USER, TARGET_SECRET),
                    )],
                    allowed_initiator: None,
                },
            ),
            (
                BOUND.to_owned(),
                TargetAuth {
                    chap: Vec::new(),
                    allowed_initiator: Some("iqn.2010-04.org.ipxe:nobody".to_owned()),
                },
            ),
            (FULL.to_owned(), TargetAuth::default()),
            (READONLY.to_owned(), TargetAuth::default()),
            (SLOW.to_owned(), TargetAuth::default()),
        ];
        TestResolver {
            auth,
            devices: Mutex::new(HashMap::new()),
            dir: dir.to_owned(),
            size,
            events: Mutex::new(Vec::new()),
            slow: Mutex::new(None),
        }
    }

    pub fn login_failures(&self) -> Vec<u16> {
        self.events
            .lock()
            .iter()
            .filter_map(|e| match e {
                IscsiEvent::LoginFailed { status, .. } => Some(*status),
                _ => None,
            })
            .collect()
    }
}

impl TargetResolver for TestResolver {
    fn targets(&self) -> Vec<String> {
        self.auth.iter().map(|(t, _)| t.clone()).collect()
    }
    fn auth(&self, target: &str) -> Option<TargetAuth> {
        self.auth
            .iter()
            .find(|(t, _)| t == target)
            .map(|(_, a)| a.clone())
    }
    fn open_lun0(&self, target: &str) -> Result<Checked, String> {
        let mut devs = self.devices.lock();
        if let Some(d) = devs.get(target) {
            return Ok(d.clone());
        }
        let dev: Arc<dyn BlockDevice> = if target == FULL {
            // A full overlay: reads work, every allocating request fails.
            let rule = FaultRule::new(FaultError::NoSpace).ops(&[
                OpKind::Write,
                OpKind::Trim,
                OpKind::Zero,
            ]);
            Arc::new(Fault::new(Arc::new(MemDisk::new(self.size)), rule))
        } else if target == SLOW {
            let file = FileDisk::create(&self.dir.join("slow.img"), self.size)
                .map_err(|e| e.to_string())?;
            let d = Arc::new(Delay::new(Arc::new(file)));
            *self.slow.lock() = Some(d.clone());
            d
        } else if target == READONLY {
            let size = usize::try_from(self.size).map_err(|e| e.to_string())?;
            Arc::new(khoi_block::MemDevice::read_only(vec![0; size]))
        } else {
            let name = target.rsplit(':').next().unwrap_or("lun");
            // A file, so reads take the transport's sendfile path.
            Arc::new(
                FileDisk::create(&self.dir.join(format!("{name}.img")), self.size)
                    .map_err(|e| e.to_string())?,
            )
        };
        let c = Checked::new(dev);
        devs.insert(target.to_owned(), c.clone());
        Ok(c)
    }
    fn identity(&self, target: &str) -> LunIdentity {
        // Derive stable ids from the name so two targets never collide.
        let h = target.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3)
        });
        let mut naa = [0u8; 16];
        naa[0] = 0x60;
        naa[1] = 0x01;
        naa[2] = 0x40;
        naa[3] = 0x5f;
        naa[8..16].copy_from_slice(&h.to_be_bytes());
        LunIdentity {
            serial: format!("KHOI{:016X}", h),
            naa,
        }
    }
    fn event(&self, ev: IscsiEvent) {
        self.events.lock().push(ev);
    }
}
