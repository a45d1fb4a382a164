//! Partition tables (MBR with extended partitions, GPT with CRC checks) and
//! what filesystem each partition holds, judged by its boot sector.
//!
//! Everything read here is untrusted: offsets are checked against the device,
//! counts are capped, and a bad table is an error string the caller turns into
//! a `malformed-image` finding.

use khoi_block::BlockDevice;

use crate::io::{Counters, read_exact_at};

const SECTOR: u64 = 512;

/// What the partition table said about a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PartType {
    Mbr(u8),
    Gpt([u8; 16]),
    /// No table: the whole disk is one filesystem ("superfloppy").
    Whole,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Partition {
    /// 1-based, as Windows and `sfdisk` number them.
    pub number: usize,
    pub start: u64,
    pub len: u64,
    pub ty: PartType,
}

impl Partition {
    pub fn describe(&self) -> String {
        let ty = match &self.ty {
            PartType::Mbr(t) => format!("MBR type {t:#04x}"),
            PartType::Gpt(g) => format!("GPT type {}", guid_string(g)),
            PartType::Whole => "no partition table".to_string(),
        };
        format!(
            "partition {} ({ty}, {} MiB at {} MiB)",
            self.number,
            self.len >> 20,
            self.start >> 20
        )
    }

    /// Partitions that hold no filesystem to check (extended containers, the
    /// Microsoft reserved partition).
    pub fn is_container_or_reserved(&self) -> bool {
        match &self.ty {
            PartType::Mbr(t) => matches!(t, 0x05 | 0x0f | 0x85),
            PartType::Gpt(g) => *g == GPT_MS_RESERVED,
            PartType::Whole => false,
        }
    }
}

/// Which table the disk had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableKind {
    Mbr,
    Gpt,
    None,
}

#[derive(Debug)]
pub(crate) struct Table {
    pub kind: TableKind,
    pub partitions: Vec<Partition>,
    /// Problems that did not stop the reading (a bad primary GPT header with a
    /// good backup): reported as malformed findings.
    pub warnings: Vec<String>,
}

/// GPT type GUIDs as stored on disk (mixed-endian).
const GPT_MS_RESERVED: [u8; 16] = guid(
    0xE3C9E316,
    0x0B5C,
    0x4DB8,
    [0x81, 0x7D, 0xF9, 0x2D, 0xF0, 0x02, 0x15, 0xAE],
);

const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

pub(crate) fn guid_string(g: &[u8; 16]) -> String {
    let a = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
    let b = u16::from_le_bytes([g[4], g[5]]);
    let c = u16::from_le_bytes([g[6], g[7]]);
    format!(
        "{a:08X}-{b:04X}-{c:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]
    )
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes([
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
        b[at + 6],
        b[at + 7],
    ])
}

/// CRC-32 (IEEE, reflected), as GPT uses.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Read the partition table of `dev`.
pub(crate) fn read_table(
    dev: &dyn BlockDevice,
    c: &Counters,
    max_partitions: usize,
) -> Result<Table, String> {
    if dev.size() < SECTOR {
        return Err(format!(
            "the image is {} bytes, smaller than one sector",
            dev.size()
        ));
    }
    let mut mbr = [0u8; 512];
    read_exact_at(dev, c, &mut mbr, 0).map_err(|e| format!("reading sector 0: {e}"))?;
    if is_fs_boot_sector(&mbr) {
        return Ok(Table {
            kind: TableKind::None,
            partitions: vec![Partition {
                number: 1,
                start: 0,
                len: dev.size(),
                ty: PartType::Whole,
            }],
            warnings: Vec::new(),
        });
    }
    if mbr[510..512] != [0x55, 0xAA] {
        return Err("sector 0 has neither an MBR signature (55 AA) nor a filesystem".to_string());
    }
    let entries: Vec<(u8, u32, u32)> = (0..4)
        .map(|i| {
            let e = &mbr[446 + 16 * i..462 + 16 * i];
            (e[4], le32(e, 8), le32(e, 12))
        })
        .collect();
    if entries.iter().any(|&(t, _, _)| t == 0xEE) {
        return read_gpt(dev, c, max_partitions);
    }
    let mut partitions = Vec::new();
    let mut warnings = Vec::new();
    for (i, &(ty, lba, count)) in entries.iter().enumerate() {
        if ty == 0 || count == 0 {
            continue;
        }
        let p = Partition {
            number: i + 1,
            start: u64::from(lba) * SECTOR,
            len: u64::from(count) * SECTOR,
            ty: PartType::Mbr(ty),
        };
        if p.start.saturating_add(p.len) > dev.size() {
            warnings.push(format!("{} runs past the end of the image", p.describe()));
        }
        if matches!(ty, 0x05 | 0x0f | 0x85) {
            read_logicals(
                dev,
                c,
                u64::from(lba),
                &mut partitions,
                &mut warnings,
                max_partitions,
            );
        }
        partitions.push(p);
    }
    partitions.sort_by_key(|p| p.number);
    Ok(Table {
        kind: TableKind::Mbr,
        partitions,
        warnings,
    })
}

/// Follow the chain of extended boot records. Logical partitions are numbered
/// from 5, like Linux does.
fn read_logicals(
    dev: &dyn BlockDevice,
    c: &Counters,
    ext_lba: u64,
    out: &mut Vec<Partition>,
    warnings: &mut Vec<String>,
    max_partitions: usize,
) {
    let mut ebr_lba = ext_lba;
    let mut number = 5;
    let mut seen = Vec::new();
    while out.len() < max_partitions {
        if seen.contains(&ebr_lba) {
            warnings.push(format!(
                "the extended partition chain loops at sector {ebr_lba}"
            ));
            return;
        }
        seen.push(ebr_lba);
        let mut ebr = [0u8; 512];
        let Some(at) = ebr_lba.checked_mul(SECTOR) else {
            return;
        };
        if read_exact_at(dev, c, &mut ebr, at).is_err() || ebr[510..512] != [0x55, 0xAA] {
            warnings.push(format!("bad extended boot record at sector {ebr_lba}"));
            return;
        }
        let (ty, rel, count) = (ebr[446 + 4], le32(&ebr, 446 + 8), le32(&ebr, 446 + 12));
        if ty != 0 && count != 0 {
            out.push(Partition {
                number,
                start: (ebr_lba + u64::from(rel)) * SECTOR,
                len: u64::from(count) * SECTOR,
                ty: PartType::Mbr(ty),
            });
            number += 1;
        }
        let (next_ty, next_rel) = (ebr[462 + 4], le32(&ebr, 462 + 8));
        if next_ty == 0 || next_rel == 0 {
            return;
        }
        ebr_lba = ext_lba + u64::from(next_rel);
    }
}

struct GptHeader {
    entries_lba: u64,
    count: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn gpt_header(dev: &dyn BlockDevice, c: &Counters, lba: u64) -> Result<GptHeader, String> {
    let mut h = [0u8; 512];
    read_exact_at(dev, c, &mut h, lba * SECTOR).map_err(|e| e.to_string())?;
    if &h[0..8] != b"EFI PART" {
        return Err(format!("no GPT signature at sector {lba}"));
    }
    let size = le32(&h, 12) as usize;
    if !(92..=512).contains(&size) {
        return Err(format!("GPT header at sector {lba} has size {size}"));
    }
    let stored = le32(&h, 16);
    let mut copy = h;
    copy[16..20].fill(0);
    if crc32(&copy[..size]) != stored {
        return Err(format!("GPT header at sector {lba} fails its CRC"));
    }
    Ok(GptHeader {
        entries_lba: le64(&h, 72),
        count: le32(&h, 80),
        entry_size: le32(&h, 84),
        entries_crc: le32(&h, 88),
    })
}

fn read_gpt(dev: &dyn BlockDevice, c: &Counters, max_partitions: usize) -> Result<Table, String> {
    let mut warnings = Vec::new();
    let last_lba = dev.size() / SECTOR - 1;
    let mut errors = Vec::new();
    for lba in [1, last_lba] {
        match gpt_header(dev, c, lba).and_then(|h| gpt_entries(dev, c, &h, max_partitions)) {
            Ok(partitions) => {
                if lba != 1 {
                    warnings.push(format!(
                        "primary GPT unusable ({}); the backup GPT was read",
                        errors.join("; ")
                    ));
                }
                return Ok(Table {
                    kind: TableKind::Gpt,
                    partitions,
                    warnings,
                });
            }
            Err(e) => errors.push(e),
        }
    }
    Err(format!(
        "protective MBR but no usable GPT: {}",
        errors.join("; ")
    ))
}

fn gpt_entries(
    dev: &dyn BlockDevice,
    c: &Counters,
    h: &GptHeader,
    max_partitions: usize,
) -> Result<Vec<Partition>, String> {
    // The spec allows any multiple of 128; Windows and every tool write 128
    // entries of 128 bytes. Capping the array keeps a hostile header from
    // asking for gigabytes.
    let esize = h.entry_size as usize;
    if esize < 128 || !esize.is_multiple_of(128) || esize > 1024 || h.count > 4096 {
        return Err(format!(
            "GPT entry array of {} entries of {} bytes is not plausible",
            h.count, esize
        ));
    }
    let mut buf = vec![0u8; esize * h.count as usize];
    let at = h
        .entries_lba
        .checked_mul(SECTOR)
        .ok_or("GPT entry array offset overflows")?;
    read_exact_at(dev, c, &mut buf, at).map_err(|e| format!("GPT entry array: {e}"))?;
    if crc32(&buf) != h.entries_crc {
        return Err("GPT entry array fails its CRC".to_string());
    }
    let mut out = Vec::new();
    for (i, e) in buf.chunks_exact(esize).enumerate() {
        let mut ty = [0u8; 16];
        ty.copy_from_slice(&e[0..16]);
        if ty == [0; 16] {
            continue;
        }
        if out.len() >= max_partitions {
            return Err(format!("more than {max_partitions} partitions"));
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first {
            return Err(format!("GPT entry {} ends before it starts", i + 1));
        }
        out.push(Partition {
            number: i + 1,
            start: first.saturating_mul(SECTOR),
            len: (last - first + 1).saturating_mul(SECTOR),
            ty: PartType::Gpt(ty),
        });
    }
    Ok(out)
}

/// What a partition's first sector says it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FsKind {
    Ntfs,
    BitLocker,
    Fat,
    Exfat,
    /// All zeroes: never formatted (or trimmed).
    Empty,
    Unknown,
}

pub(crate) fn fs_kind(boot: &[u8; 512]) -> FsKind {
    match &boot[3..11] {
        b"NTFS    " => FsKind::Ntfs,
        b"-FVE-FS-" => FsKind::BitLocker,
        b"EXFAT   " => FsKind::Exfat,
        _ if &boot[54..59] == b"FAT12"
            || &boot[54..59] == b"FAT16"
            || &boot[82..87] == b"FAT32" =>
        {
            FsKind::Fat
        }
        _ if boot.iter().all(|&b| b == 0) => FsKind::Empty,
        _ => FsKind::Unknown,
    }
}

fn is_fs_boot_sector(s: &[u8; 512]) -> bool {
    matches!(fs_kind(s), FsKind::Ntfs | FsKind::BitLocker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn guid_is_printed_the_way_windows_does() {
        assert_eq!(
            guid_string(&GPT_MS_RESERVED),
            "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
        );
    }
}
