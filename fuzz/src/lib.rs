//! Helpers shared by the fuzz targets: limits small enough that every
//! allowed allocation fits the `-rss_limit_mb` budget, and "fix-up" framing
//! that recomputes checksums so mutations reach the parsers behind them.

use mmsb::Limits;

/// Limits the targets decode under. Pages and records up to 1 MiB: an
/// input can legitimately ask for that much (an all-zero page is 76 bytes
/// on disk), and no more.
pub const LIMITS: Limits = Limits { max_page_len: 1 << 20, max_record_len: 1 << 20 };

/// CRC32C, as the formats use it.
pub fn crc(b: &[u8]) -> u32 {
    crc32c::crc32c(b)
}

/// One log record frame (docs/FORMAT.md, "Record frame") with a valid CRC.
pub fn frame(kind: u8, lsn: u64, body: &[u8], out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.push(kind);
    out.push(0);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(body);
    let c = crc(&out[at..]);
    out.extend_from_slice(&c.to_le_bytes());
}

/// Turn fuzz bytes into a segment: a valid header, then records cut from
/// the input (type, u16 body length, body) with valid CRCs and consecutive
/// LSNs from `first_lsn`, then whatever input is left as a raw tail.
pub fn segment(generation: u64, seq: u64, first_lsn: u64, mut data: &[u8]) -> Vec<u8> {
    let mut out = mmsb::internals::log::writer::segment_header(generation, seq, first_lsn).to_vec();
    let mut lsn = first_lsn;
    while data.len() >= 3 {
        let kind = data[0];
        if kind == 0xEE {
            // Raw tail: the rest goes in unframed.
            break;
        }
        let len = (u16::from_le_bytes([data[1], data[2]]) as usize).min(data.len() - 3);
        frame(kind, lsn, &data[3..3 + len], &mut out);
        lsn += 1;
        data = &data[3 + len..];
    }
    out.extend_from_slice(data);
    out
}

/// Make a page image's length field and CRC agree with `buf`.
pub fn fix_page_image(buf: &mut [u8]) {
    if buf.len() >= 68 {
        let n = buf.len();
        buf[8..16].copy_from_slice(&(n as u64).to_le_bytes());
        let c = crc(&buf[..n - 4]);
        buf[n - 4..].copy_from_slice(&c.to_le_bytes());
    }
}

/// Make a checkpoint's header CRC and trailer agree with `buf`.
pub fn fix_checkpoint(buf: &mut [u8]) {
    const HEAD: usize = 72;
    const TAIL: usize = 32;
    let n = buf.len();
    if n < HEAD + TAIL {
        return;
    }
    let c = crc(&buf[..64]);
    buf[64..68].copy_from_slice(&c.to_le_bytes());
    let count: [u8; 8] = buf[56..64].try_into().unwrap_or_default();
    let t = n - TAIL;
    buf[t..t + 8].copy_from_slice(b"CKPTEND\0");
    buf[t + 8..t + 16].copy_from_slice(&count);
    buf[t + 16..t + 24].copy_from_slice(&(n as u64).to_le_bytes());
    let c = crc(&buf[..n - 4]);
    buf[n - 4..].copy_from_slice(&c.to_le_bytes());
}
