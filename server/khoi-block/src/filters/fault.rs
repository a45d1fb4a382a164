//! nbdkit's `error` filter: fail chosen requests with a chosen error, to test
//! how frontends map and survive device errors (EIO, a full overlay, a reset).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use super::OpKind;
use crate::device::{BlockDevice, BlockError, DeviceCaps, Extent, ReadSegment, Result, WriteFlags};

/// The error an injected fault returns. [`BlockError`] is not `Clone` (it
/// holds an `io::Error`), so a rule names the error and each fault builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultError {
    /// `BlockError::Io` with this OS error number (e.g. `libc::EIO`).
    Io(i32),
    NoSpace,
    ReadOnly,
    Gone,
}

impl FaultError {
    fn build(&self) -> BlockError {
        match self {
            FaultError::Io(errno) => BlockError::Io(std::io::Error::from_raw_os_error(*errno)),
            FaultError::NoSpace => BlockError::NoSpace("injected fault".into()),
            FaultError::ReadOnly => BlockError::ReadOnly,
            FaultError::Gone => BlockError::Gone,
        }
    }
}

/// When a matching request fails.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    Always,
    /// The nth matching request, the 2nth, and so on (n ≥ 1).
    EveryNth(u64),
    /// Each matching request with probability `p` (0..=1), drawn from a
    /// generator seeded with `seed`, so a failing run can be replayed.
    Probability {
        p: f64,
        seed: u64,
    },
}

/// Which requests fail, how often, and with what.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    pub ops: Vec<OpKind>,
    /// Byte range a request must overlap. Flush has no range, so it matches
    /// only a rule without one.
    pub range: Option<Range<u64>>,
    pub trigger: Trigger,
    pub error: FaultError,
}

impl FaultRule {
    /// Every request of every kind fails with `error`.
    pub fn new(error: FaultError) -> FaultRule {
        FaultRule {
            ops: OpKind::ALL.to_vec(),
            range: None,
            trigger: Trigger::Always,
            error,
        }
    }

    pub fn ops(mut self, ops: &[OpKind]) -> FaultRule {
        self.ops = ops.to_vec();
        self
    }

    pub fn range(mut self, range: Range<u64>) -> FaultRule {
        self.range = Some(range);
        self
    }

    pub fn trigger(mut self, trigger: Trigger) -> FaultRule {
        self.trigger = trigger;
        self
    }

    fn matches(&self, op: OpKind, span: Option<(u64, u64)>) -> bool {
        if !self.ops.contains(&op) {
            return false;
        }
        match (&self.range, span) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(r), Some((offset, len))) => offset < r.end && r.start < offset + len,
        }
    }
}

#[derive(Debug)]
struct State {
    rule: FaultRule,
    /// Matching requests seen since the rule was set.
    seen: u64,
    rng: u64,
}

/// Fails requests that match its rule while armed; passes everything else.
#[derive(Debug)]
pub struct Fault {
    inner: Arc<dyn BlockDevice>,
    armed: AtomicBool,
    injected: AtomicU64,
    state: Mutex<State>,
}

impl Fault {
    /// An armed fault layer with `rule`.
    pub fn new(inner: Arc<dyn BlockDevice>, rule: FaultRule) -> Fault {
        Fault {
            inner,
            armed: AtomicBool::new(true),
            injected: AtomicU64::new(0),
            state: Mutex::new(State::new(rule)),
        }
    }

    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    pub fn is_armed(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
    }

    /// Replaces the rule and restarts its counting and random sequence.
    pub fn set_rule(&self, rule: FaultRule) {
        *self.state.lock() = State::new(rule);
    }

    /// How many requests have been failed so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn check(&self, op: OpKind, span: Option<(u64, u64)>) -> Result<()> {
        if !self.is_armed() {
            return Ok(());
        }
        let mut st = self.state.lock();
        if !st.rule.matches(op, span) {
            return Ok(());
        }
        st.seen += 1;
        let fire = match st.rule.trigger {
            Trigger::Always => true,
            Trigger::EveryNth(n) => st.seen.is_multiple_of(n.max(1)),
            Trigger::Probability { p, .. } => st.next_unit() < p,
        };
        if !fire {
            return Ok(());
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        Err(st.rule.error.build())
    }
}

impl State {
    fn new(rule: FaultRule) -> State {
        let rng = match rule.trigger {
            Trigger::Probability { seed, .. } => seed,
            _ => 0,
        };
        State { rule, seen: 0, rng }
    }

    /// The next draw in [0, 1) from a splitmix64 sequence: small, seedable,
    /// and good enough to spread faults over a test run.
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits fill an f64 mantissa exactly.
        #[allow(clippy::cast_precision_loss)]
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        unit
    }
}

impl BlockDevice for Fault {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn device_caps(&self) -> DeviceCaps {
        self.inner.device_caps()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check(OpKind::Read, Some((offset, buf.len() as u64)))?;
        self.inner.read_at(buf, offset)
    }

    fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        self.check(OpKind::Read, Some((offset, len)))?;
        self.inner.read_plan(offset, len)
    }

    fn write_at(&self, buf: &[u8], offset: u64, flags: WriteFlags) -> Result<()> {
        self.check(OpKind::Write, Some((offset, buf.len() as u64)))?;
        self.inner.write_at(buf, offset, flags)
    }

    fn flush(&self) -> Result<()> {
        self.check(OpKind::Flush, None)?;
        self.inner.flush()
    }

    fn trim(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.check(OpKind::Trim, Some((offset, len)))?;
        self.inner.trim(offset, len, flags)
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.check(OpKind::Zero, Some((offset, len)))?;
        self.inner.write_zeroes(offset, len, flags)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check(OpKind::Extents, Some((offset, len)))?;
        self.inner.extents(offset, len)
    }
}
