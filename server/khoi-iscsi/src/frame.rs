//! Check-then-parse framing: AHS, data segment padding and CRC32C digests.
//!
//! [`check`] says how many bytes the next PDU occupies (or that more are
//! needed) looking only at the BHS, so a reader never parses a partial PDU;
//! [`decode`] then splits it off the buffer and verifies digests.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::pdu::{BHS_LEN, Bhs, Pdu};

/// Negotiated digests (HeaderDigest / DataDigest = CRC32C).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("header digest mismatch")]
    HeaderDigest,
    /// The PDU is framed correctly, so the connection can go on; the
    /// header is returned so the caller can Reject it.
    #[error("data digest mismatch")]
    DataDigest { bhs: [u8; BHS_LEN] },
}

/// Round a data segment length up to the 4-byte boundary.
pub const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// Total wire length of the PDU at the start of `buf`, once its BHS is
/// there. `max_data` bounds the data segment (our declared
/// MaxRecvDataSegmentLength) so a peer cannot make us buffer gigabytes.
pub fn check(buf: &[u8], digests: Digests, max_data: usize) -> Result<Option<usize>, FrameError> {
    let Ok(bhs) = Bhs::new_checked(buf) else {
        return Ok(None);
    };
    let dlen = bhs.data_segment_len();
    if dlen > max_data {
        return Err(FrameError::TooLong {
            len: dlen,
            max: max_data,
        });
    }
    let mut total = BHS_LEN + bhs.total_ahs_len();
    if digests.header {
        total += 4;
    }
    total += padded(dlen);
    if digests.data && dlen > 0 {
        total += 4;
    }
    Ok(if buf.len() >= total {
        Some(total)
    } else {
        None
    })
}

/// Split the next complete PDU off `buf`.
pub fn decode(
    buf: &mut BytesMut,
    digests: Digests,
    max_data: usize,
) -> Result<Option<Pdu>, FrameError> {
    let Some(total) = check(buf, digests, max_data)? else {
        return Ok(None);
    };
    let mut frame = buf.split_to(total).freeze();
    let mut bhs = [0u8; BHS_LEN];
    bhs.copy_from_slice(&frame[..BHS_LEN]);
    let view = Bhs::new_unchecked(&bhs[..]);
    let ahs_len = view.total_ahs_len();
    let dlen = view.data_segment_len();
    if digests.header {
        let hdr_end = BHS_LEN + ahs_len;
        let want = crc32c::crc32c(&frame[..hdr_end]);
        let got = (&frame[hdr_end..hdr_end + 4]).get_u32_le();
        if want != got {
            return Err(FrameError::HeaderDigest);
        }
    }
    frame.advance(BHS_LEN);
    let ahs = frame.split_to(ahs_len);
    if digests.header {
        frame.advance(4);
    }
    let padded_data = frame.split_to(padded(dlen));
    if digests.data && dlen > 0 {
        let want = crc32c::crc32c(&padded_data);
        let got = (&frame[..4]).get_u32_le();
        if want != got {
            return Err(FrameError::DataDigest { bhs });
        }
    }
    let data = padded_data.slice(..dlen);
    Ok(Some(Pdu { bhs, ahs, data }))
}

/// Bytes that go on the wire before the data segment: BHS, AHS and the
/// header digest. The digest is CRC32C stored little-endian, as every
/// initiator (and RFC 7143's examples) expect.
pub fn encode_header(pdu: &Pdu, digests: Digests) -> BytesMut {
    encode_bhs_ahs(&pdu.bhs, &pdu.ahs, digests)
}

/// [`encode_header`] for a PDU without AHS whose data segment the caller
/// sends itself (Data-In cut from a read's segments).
pub fn encode_bhs(bhs: &[u8; BHS_LEN], digests: Digests) -> BytesMut {
    encode_bhs_ahs(bhs, &[], digests)
}

fn encode_bhs_ahs(bhs: &[u8; BHS_LEN], ahs: &[u8], digests: Digests) -> BytesMut {
    let mut out = BytesMut::with_capacity(BHS_LEN + ahs.len() + 4);
    out.put_slice(bhs);
    out.put_slice(ahs);
    if digests.header {
        let crc = crc32c::crc32c(&out);
        out.put_u32_le(crc);
    }
    out
}

/// Bytes after the data segment: padding and the data digest.
pub fn encode_trailer(data: &[u8], digests: Digests) -> BytesMut {
    let pad = padded(data.len()) - data.len();
    let mut out = BytesMut::with_capacity(8);
    out.put_bytes(0, pad);
    if digests.data && !data.is_empty() {
        let crc = crc32c::crc32c_append(crc32c::crc32c(data), &[0u8; 3][..pad]);
        out.put_u32_le(crc);
    }
    out
}

/// A whole PDU as one buffer (tests and small control PDUs).
pub fn encode(pdu: &Pdu, digests: Digests) -> Bytes {
    let mut out = encode_header(pdu, digests);
    out.put_slice(&pdu.data);
    out.put_slice(&encode_trailer(&pdu.data, digests));
    out.freeze()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
mod tests {
    use super::*;
    use crate::pdu::{NopOut, RESERVED_TAG};

    fn nop(data: &'static [u8]) -> Pdu {
        let h = NopOut {
            immediate: true,
            lun: 0,
            itt: 1,
            ttt: RESERVED_TAG,
            cmd_sn: 1,
            exp_stat_sn: 1,
        }
        .emit();
        Pdu::new(h, Bytes::from_static(data))
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn roundtrip_with_padding_and_digests() {
        for dg in [
            Digests::default(),
            Digests {
                header: true,
                data: true,
            },
        ] {
            let p = nop(b"hello");
            let wire = encode(&p, dg);
            let extra = if dg.header { 8 } else { 0 };
            assert_eq!(wire.len(), 48 + 8 + extra);
            let mut buf = BytesMut::from(&wire[..wire.len() - 1]);
            assert_eq!(decode(&mut buf, dg, 8192).unwrap(), None);
            buf.extend_from_slice(&wire[wire.len() - 1..]);
            assert_eq!(decode(&mut buf, dg, 8192).unwrap(), Some(p));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn digest_errors() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let wire = encode(&nop(b"abcd"), dg);
        let mut bad = BytesMut::from(&wire[..]);
        bad[50] ^= 1;
        assert_eq!(decode(&mut bad, dg, 8192), Err(FrameError::HeaderDigest));
        let mut bad = BytesMut::from(&wire[..]);
        bad[53] ^= 1;
        assert!(matches!(
            decode(&mut bad, dg, 8192),
            Err(FrameError::DataDigest { .. })
        ));
    }

    #[test]
    fn oversized_segment_rejected_before_buffering() {
        let mut h = [0u8; 48];
        Bhs::new_unchecked(&mut h[..]).set_data_segment_len(1 << 20);
        assert!(matches!(
            check(&h, Digests::default(), 262_144),
            Err(FrameError::TooLong { .. })
        ));
    }
}
