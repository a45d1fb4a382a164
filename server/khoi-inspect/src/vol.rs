//! One NTFS volume, read with the `ntfs` crate through a [`PartReader`]:
//! paths looked up case-insensitively in the directory B-trees (only the
//! index records on the way are read), small files read whole under a cap,
//! directories listed under a budget.

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileNamespace, NtfsVolumeFlags};
use ntfs::{Ntfs, NtfsReadSeek};

use crate::io::PartReader;

pub(crate) type R<T> = Result<T, String>;

/// A directory entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub name: String,
    pub is_dir: bool,
    pub record: u64,
}

/// Why a file could not be read whole.
#[derive(Debug)]
pub(crate) enum ReadError {
    TooBig(u64),
    Bad(String),
}

/// How many directory entries a whole check may still list.
#[derive(Debug)]
pub(crate) struct Budget {
    pub per_dir: usize,
    pub left: usize,
    pub used: usize,
}

pub(crate) struct Volume<'a> {
    ntfs: Ntfs,
    r: PartReader<'a>,
}

impl std::fmt::Debug for Volume<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume").field("reader", &self.r).finish()
    }
}

const ROOT_RECORD: u64 = 5;

impl<'a> Volume<'a> {
    pub fn open(mut r: PartReader<'a>) -> R<Self> {
        let mut ntfs = Ntfs::new(&mut r).map_err(|e| format!("NTFS boot sector: {e}"))?;
        ntfs.read_upcase_table(&mut r)
            .map_err(|e| format!("NTFS $UpCase: {e}"))?;
        Ok(Volume { ntfs, r })
    }

    /// The "dirty" flag of `$Volume`: set while Windows has the volume
    /// mounted, cleared at a clean shutdown, and what makes Windows run
    /// chkdsk at boot.
    pub fn is_dirty(&mut self) -> R<bool> {
        let info = self
            .ntfs
            .volume_info(&mut self.r)
            .map_err(|e| format!("NTFS $Volume: {e}"))?;
        Ok(info.flags().contains(NtfsVolumeFlags::IS_DIRTY))
    }

    /// Look `path` (components, matched case-insensitively) up from the root.
    pub fn find(&mut self, path: &[&str]) -> R<Option<u64>> {
        let mut record = ROOT_RECORD;
        for (i, part) in path.iter().enumerate() {
            match self.child(record, part)? {
                Some((rec, is_dir)) => {
                    if !is_dir && i + 1 < path.len() {
                        return Ok(None);
                    }
                    record = rec;
                }
                None => return Ok(None),
            }
        }
        Ok(Some(record))
    }

    fn child(&mut self, dir: u64, name: &str) -> R<Option<(u64, bool)>> {
        let err = |e: ntfs::NtfsError| format!("NTFS lookup of {name:?}: {e}");
        let file = self.ntfs.file(&mut self.r, dir).map_err(err)?;
        if !file.is_directory() {
            return Ok(None);
        }
        let index = file.directory_index(&mut self.r).map_err(err)?;
        let mut finder = index.finder();
        match NtfsFileNameIndex::find(&mut finder, &self.ntfs, &mut self.r, name) {
            None => Ok(None),
            Some(entry) => {
                let entry = entry.map_err(err)?;
                let is_dir = match entry.key() {
                    Some(Ok(k)) => k.is_directory(),
                    Some(Err(e)) => return Err(err(e)),
                    None => false,
                };
                Ok(Some((entry.file_reference().file_record_number(), is_dir)))
            }
        }
    }

    /// The entries of a directory (Win32 names; the DOS 8.3 aliases and the
    /// root's "." are left out).
    pub fn list(&mut self, dir: u64, budget: &mut Budget) -> R<Vec<Entry>> {
        let err = |e: ntfs::NtfsError| format!("NTFS directory listing: {e}");
        let file = self.ntfs.file(&mut self.r, dir).map_err(err)?;
        if !file.is_directory() {
            return Ok(Vec::new());
        }
        let index = file.directory_index(&mut self.r).map_err(err)?;
        let mut entries = index.entries();
        let mut out = Vec::new();
        let mut seen = 0usize;
        while let Some(entry) = entries.next(&mut self.r) {
            seen += 1;
            if seen > budget.per_dir || budget.left == 0 {
                return Err(format!(
                    "a directory has more than {} entries (or the check listed more than its budget)",
                    budget.per_dir
                ));
            }
            budget.left -= 1;
            budget.used += 1;
            let entry = entry.map_err(err)?;
            let Some(key) = entry.key() else { continue };
            let key = key.map_err(err)?;
            if key.namespace() == NtfsFileNamespace::Dos {
                continue;
            }
            let name = key.name().to_string_lossy();
            if name == "." {
                continue;
            }
            out.push(Entry {
                name,
                is_dir: key.is_directory(),
                record: entry.file_reference().file_record_number(),
            });
        }
        Ok(out)
    }

    /// Size of the unnamed data stream, `None` for a directory.
    pub fn size(&mut self, record: u64) -> R<Option<u64>> {
        let err = |e: ntfs::NtfsError| format!("NTFS file record {record}: {e}");
        let file = self.ntfs.file(&mut self.r, record).map_err(err)?;
        if file.is_directory() {
            return Ok(None);
        }
        match file.data(&mut self.r, "") {
            None => Ok(Some(0)),
            Some(item) => {
                let item = item.map_err(err)?;
                let attr = item.to_attribute().map_err(err)?;
                Ok(Some(attr.value_length()))
            }
        }
    }

    /// Read at most `max` bytes from the start of a file.
    pub fn read_head(&mut self, record: u64, max: usize) -> R<Vec<u8>> {
        self.read(record, max, false).map_err(|e| match e {
            ReadError::Bad(s) => s,
            ReadError::TooBig(n) => format!("file of {n} bytes"),
        })
    }

    /// Read a whole file of at most `cap` bytes.
    pub fn read_all(&mut self, record: u64, cap: u64) -> Result<Vec<u8>, ReadError> {
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        self.read(record, cap, true)
    }

    fn read(&mut self, record: u64, max: usize, whole: bool) -> Result<Vec<u8>, ReadError> {
        let err = |e: ntfs::NtfsError| ReadError::Bad(format!("NTFS file record {record}: {e}"));
        let file = self.ntfs.file(&mut self.r, record).map_err(err)?;
        let Some(item) = file.data(&mut self.r, "") else {
            return Ok(Vec::new());
        };
        let item = item.map_err(err)?;
        let attr = item.to_attribute().map_err(err)?;
        let mut value = attr.value(&mut self.r).map_err(err)?;
        let len = value.len();
        if whole && len > max as u64 {
            return Err(ReadError::TooBig(len));
        }
        let want = usize::try_from(len).unwrap_or(usize::MAX).min(max);
        let mut buf = vec![0u8; want];
        let mut done = 0;
        while done < want {
            match value.read(&mut self.r, &mut buf[done..]).map_err(err)? {
                0 => break,
                n => done += n,
            }
        }
        buf.truncate(done);
        Ok(buf)
    }
}
