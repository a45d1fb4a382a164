//! Running a [`Job`] against the block device. Blocking: the transport
//! calls [`execute`] inline only for work that stays in the page cache, and
//! on the blocking pool otherwise.

use bytes::Bytes;
use khoi_block::{BlockError, Checked, ReadSegment, WriteFlags};

use super::BLOCK_LEN;
use super::sense::{Done, Sense};

/// Block I/O to run on a blocking thread.
#[derive(Debug, Clone)]
pub enum Job {
    Read {
        offset: u64,
        len: u64,
    },
    Write {
        offset: u64,
        data: Bytes,
        flags: WriteFlags,
    },
    Compare {
        offset: u64,
        len: u64,
        data: Bytes,
        per_block: bool,
    },
    Flush,
    Trim {
        ranges: Vec<(u64, u64)>,
    },
    Zero {
        offset: u64,
        len: u64,
        unmap: bool,
        fua: bool,
    },
    WriteSame {
        offset: u64,
        len: u64,
        pattern: Bytes,
        fua: bool,
    },
}

#[derive(Debug)]
pub enum JobOutput {
    /// Where the read's bytes are; the writer moves them to the socket.
    Read(Vec<ReadSegment>),
    Done(Done),
}

/// Run a job against the device. Blocking: call from a blocking thread.
pub fn execute(job: Job, dev: &Checked) -> Result<JobOutput, BlockError> {
    match job {
        Job::Read { offset, len } => Ok(JobOutput::Read(dev.read_plan(offset, len)?)),
        Job::Write {
            offset,
            data,
            flags,
        } => {
            dev.write_at(&data, offset, flags)?;
            Ok(JobOutput::Done(Done::good()))
        }
        Job::Compare {
            offset,
            len,
            data,
            per_block,
        } => {
            let len_usize = usize::try_from(len).map_err(|_| BlockError::OutOfRange {
                offset,
                len,
                size: dev.size(),
            })?;
            let mut buf = vec![0u8; len_usize];
            dev.read_at(&mut buf, offset)?;
            let same = if per_block {
                buf.chunks(data.len().max(1)).all(|c| c == &data[..c.len()])
            } else {
                buf == data[..]
            };
            Ok(JobOutput::Done(if same {
                Done::good()
            } else {
                Done::check(Sense::MISCOMPARE)
            }))
        }
        Job::Flush => {
            dev.flush()?;
            Ok(JobOutput::Done(Done::good()))
        }
        Job::Trim { ranges } => {
            for (off, len) in ranges {
                dev.trim(off, len, WriteFlags::NONE)?;
            }
            Ok(JobOutput::Done(Done::good()))
        }
        Job::Zero {
            offset,
            len,
            unmap,
            fua,
        } => {
            let flags = if fua {
                WriteFlags::FUA
            } else {
                WriteFlags::NONE
            };
            if unmap {
                dev.trim(offset, len, flags)?;
            } else {
                dev.write_zeroes(offset, len, flags)?;
            }
            Ok(JobOutput::Done(Done::good()))
        }
        Job::WriteSame {
            offset,
            len,
            pattern,
            fua,
        } => {
            // Repeat the block into a bounded buffer and write in chunks.
            let chunk_blocks = 256u64;
            let mut buf = Vec::with_capacity(pattern.len() * 256);
            for _ in 0..chunk_blocks {
                buf.extend_from_slice(&pattern);
            }
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(chunk_blocks * BLOCK_LEN);
                let n_usize = usize::try_from(n).unwrap_or(buf.len()).min(buf.len());
                dev.write_at(&buf[..n_usize], offset + done, WriteFlags::NONE)?;
                done += n;
            }
            // Whole blocks only, so nothing to emulate per chunk; FUA for
            // the whole pattern is one flush at the end.
            if fua {
                dev.flush()?;
            }
            Ok(JobOutput::Done(Done::good()))
        }
    }
}
