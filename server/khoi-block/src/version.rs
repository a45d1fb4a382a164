//! A version: an ordered stack of immutable layers read through one flattened
//! run-length map built at open.
//!
//! Each layer contributes its `Present` runs (split further by the holes of
//! its data file, which read as zero anyway) and its `Zero` runs; upper layers
//! paint over lower ones. The result maps every block to one layer file or to
//! zero, so a read is a binary search plus one `pread` (or one `sendfile`
//! segment) per run, whatever the depth of the stack. Memory is two words per
//! run, independent of the image size.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use crate::device::{
    BLOCK, BlockDevice, BlockError, DeviceCaps, Extent, ExtentKind, Level, ReadSegment, Result,
    WriteFlags,
};
use crate::error::StoreError;
use crate::map::{BlockState, RunMap, Source, blocks_for};
use crate::overlay::push_extent;
use crate::{fsio, mapfile};

/// Paths of one layer's two files.
#[derive(Debug, Clone)]
pub(crate) struct LayerPaths {
    pub data: PathBuf,
    pub map: PathBuf,
}

pub struct VersionDevice {
    image: String,
    number: u32,
    uuid: String,
    size: u64,
    layers: Vec<Arc<File>>,
    map: RunMap,
}

impl std::fmt::Debug for VersionDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionDevice")
            .field("image", &self.image)
            .field("number", &self.number)
            .field("uuid", &self.uuid)
            .field("size", &self.size)
            .field("layers", &self.layers.len())
            .field("runs", &self.map.len())
            .finish()
    }
}

/// Block runs holding data in `f`, rounded outwards to whole blocks.
fn data_block_runs(f: &File, size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (d, h) in fsio::data_ranges(f, size) {
        let (s, e) = (d / BLOCK, h.div_ceil(BLOCK));
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Paints `[s, e)` with `src` where `data` has data and with zero elsewhere.
fn paint_present(
    s: u64,
    e: u64,
    src: Source,
    data: &[(u64, u64)],
    idx: &mut usize,
    out: &mut Vec<(u64, u64, Source)>,
) {
    let mut pos = s;
    while *idx < data.len() && data[*idx].1 <= pos {
        *idx += 1;
    }
    let mut i = *idx;
    while pos < e {
        match data.get(i) {
            Some(&(ds, de)) if ds < e => {
                if ds > pos {
                    out.push((pos, ds, Source::Zero));
                    pos = ds;
                }
                let stop = de.min(e);
                out.push((pos, stop, src));
                pos = stop;
                if de <= e {
                    i += 1;
                }
            }
            _ => {
                out.push((pos, e, Source::Zero));
                pos = e;
            }
        }
    }
    *idx = i;
}

/// What one layer holds, as byte ranges in disk order: the ranges it stores
/// data for, and the ranges it sets to zero (trimmed, or present but a hole
/// in its sparse file, which reads as zero). Ranges it does not mention come
/// from the layers below.
pub(crate) fn layer_runs(
    lp: &LayerPaths,
    size: u64,
) -> std::result::Result<(File, Vec<crate::store::LayerRun>), StoreError> {
    let f = fsio::open_ro(&lp.data)?;
    let len = f.metadata().map_err(StoreError::io(&lp.data))?.len();
    if len != size {
        return Err(StoreError::corrupt(
            &lp.data,
            format!("layer is {len} bytes, its version is {size}"),
        ));
    }
    let nblocks = blocks_for(size);
    let data = data_block_runs(&f, size);
    let src = Source::Layer(0);
    let mut paints = Vec::new();
    let mut idx = 0;
    match mapfile::read(&lp.map, size)? {
        mapfile::MapBody::Full => paint_present(0, nblocks, src, &data, &mut idx, &mut paints),
        mapfile::MapBody::States(states) => {
            for run in states.runs(0, nblocks) {
                match run.state {
                    BlockState::NotPresent => {}
                    BlockState::Zero => paints.push((run.start, run.end, Source::Zero)),
                    BlockState::Present => {
                        paint_present(run.start, run.end, src, &data, &mut idx, &mut paints);
                    }
                }
            }
        }
    }
    let mut out: Vec<crate::store::LayerRun> = Vec::with_capacity(paints.len());
    for (s, e, source) in paints {
        let offset = s * BLOCK;
        // The last block of a disk whose size is not a block multiple.
        let end = (e * BLOCK).min(size);
        if end <= offset {
            continue;
        }
        let data = matches!(source, Source::Layer(_));
        match out.last_mut() {
            Some(last) if last.data == data && last.offset + last.len == offset => {
                last.len = end - last.offset;
            }
            _ => out.push(crate::store::LayerRun {
                offset,
                len: end - offset,
                data,
            }),
        }
    }
    Ok((f, out))
}

impl VersionDevice {
    pub(crate) fn open(
        image: &str,
        number: u32,
        uuid: &str,
        size: u64,
        layers: &[LayerPaths],
    ) -> std::result::Result<VersionDevice, StoreError> {
        let nblocks = blocks_for(size);
        let mut map = RunMap::zero(nblocks);
        let mut files = Vec::with_capacity(layers.len());
        for (i, lp) in layers.iter().enumerate() {
            let src = Source::Layer(u32::try_from(i).expect("layer count fits u32"));
            let f = fsio::open_ro(&lp.data)?;
            let len = f.metadata().map_err(StoreError::io(&lp.data))?.len();
            if len != size {
                return Err(StoreError::corrupt(
                    &lp.data,
                    format!("layer is {len} bytes, version {number} of image {image:?} is {size}"),
                ));
            }
            let data = data_block_runs(&f, size);
            let mut paints = Vec::new();
            let mut idx = 0;
            match mapfile::read(&lp.map, size)? {
                mapfile::MapBody::Full => {
                    paint_present(0, nblocks, src, &data, &mut idx, &mut paints);
                }
                mapfile::MapBody::States(states) => {
                    for run in states.runs(0, nblocks) {
                        match run.state {
                            BlockState::NotPresent => {}
                            BlockState::Zero => paints.push((run.start, run.end, Source::Zero)),
                            BlockState::Present => {
                                paint_present(
                                    run.start,
                                    run.end,
                                    src,
                                    &data,
                                    &mut idx,
                                    &mut paints,
                                );
                            }
                        }
                    }
                }
            }
            map.paint(&paints);
            files.push(Arc::new(f));
        }
        Ok(VersionDevice {
            image: image.to_string(),
            number,
            uuid: uuid.to_string(),
            size,
            layers: files,
            map,
        })
    }

    pub fn image(&self) -> &str {
        &self.image
    }

    pub fn number(&self) -> u32 {
        self.number
    }

    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Number of runs in the flattened map.
    pub fn map_runs(&self) -> usize {
        self.map.len()
    }

    /// Heap bytes of the flattened map.
    pub fn map_bytes(&self) -> usize {
        self.map.heap_bytes()
    }

    fn clip(s: u64, e: u64, offset: u64, end: u64) -> (u64, u64) {
        ((s * BLOCK).max(offset), (e * BLOCK).min(end))
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).expect("request sizes fit in memory")
}

impl BlockDevice for VersionDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn device_caps(&self) -> DeviceCaps {
        DeviceCaps {
            read_only: true,
            flush: false,
            fua: Level::None,
            trim: false,
            zero: Level::None,
            extents: true,
            multi_conn: true,
            write_granularity: 1,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        for (s, e, src) in self.map.runs(offset / BLOCK, end.div_ceil(BLOCK)) {
            let (rs, re) = VersionDevice::clip(s, e, offset, end);
            let dst = &mut buf[to_usize(rs - offset)..to_usize(re - offset)];
            match src {
                Source::Zero => dst.fill(0),
                Source::Layer(i) => fsio::read_exact_at(&self.layers[i as usize], dst, rs)?,
            }
        }
        Ok(())
    }

    fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        let end = offset + len;
        let mut out = Vec::new();
        for (s, e, src) in self.map.runs(offset / BLOCK, end.div_ceil(BLOCK)) {
            let (rs, re) = VersionDevice::clip(s, e, offset, end);
            out.push(match src {
                Source::Zero => ReadSegment::Zero { len: re - rs },
                Source::Layer(i) => ReadSegment::File {
                    file: Arc::clone(&self.layers[i as usize]),
                    offset: rs,
                    len: re - rs,
                },
            });
        }
        Ok(out)
    }

    fn write_at(&self, _buf: &[u8], _offset: u64, _flags: WriteFlags) -> Result<()> {
        Err(BlockError::ReadOnly)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn trim(&self, _offset: u64, _len: u64, _flags: WriteFlags) -> Result<()> {
        Err(BlockError::ReadOnly)
    }

    fn write_zeroes(&self, _offset: u64, _len: u64, _flags: WriteFlags) -> Result<()> {
        Err(BlockError::ReadOnly)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset + len;
        let mut out = Vec::new();
        for (s, e, src) in self.map.runs(offset / BLOCK, end.div_ceil(BLOCK)) {
            let (rs, re) = VersionDevice::clip(s, e, offset, end);
            let kind = match src {
                Source::Zero => ExtentKind::Zero,
                Source::Layer(_) => ExtentKind::Golden,
            };
            push_extent(&mut out, rs, re - rs, kind);
        }
        Ok(out)
    }
}
