//! Checkpoints: every page (v2 page images) with its epoch and metadata,
//! plus the commit path's counters, as of one LSN.
//!
//! Written to `ckpt-<lsn>.tmp`, fsynced, renamed to `ckpt-<lsn>.ckpt`, and
//! the directory fsynced: a checkpoint file either exists whole or not at
//! all. Recovery uses the newest one that verifies, then the log after it.

use crate::codec::page::{decode_page, encode_page};
use crate::codec::{crc, put_u32, put_u64, Limits, Reader};
use crate::page::{Location, Metadata};
use crate::replay::StateImage;
use crate::vfs::{Vfs, VfsFile};
use crate::{Error, Result};
use shared_types::{Epoch, Lsn, PageId};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Magic at the start of a checkpoint.
pub const CKPT_MAGIC: [u8; 8] = *b"MMSBCKPT";
/// Magic of the checkpoint trailer.
pub const CKPT_END: [u8; 8] = *b"CKPTEND\0";
/// Current checkpoint version (2 added the dependency-graph section; version
/// 1 files, which have none, are still read).
pub const CKPT_VERSION: u32 = 2;
/// Header flag: a dependency-graph section follows the pages.
pub const FLAG_GRAPH: u32 = 1;
/// Header size.
pub const CKPT_HEAD_LEN: usize = 72;
/// Trailer size.
pub const CKPT_TAIL_LEN: usize = 32;

/// What [`crate::Mmsb::checkpoint`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Every record up to this LSN is reflected.
    pub lsn: Lsn,
    /// The file.
    pub path: PathBuf,
    /// Pages written.
    pub pages: u64,
    /// File size.
    pub bytes: u64,
    /// Log generation at the checkpoint.
    pub generation: u64,
    /// Log segments removed because the checkpoint covers them.
    pub removed_segments: usize,
    /// Older checkpoints removed.
    pub removed_checkpoints: usize,
}

/// File name of the checkpoint at `lsn`.
pub fn checkpoint_name(lsn: u64) -> String {
    format!("ckpt-{lsn:020}.ckpt")
}

/// LSN of a checkpoint file name.
pub fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let d = name.strip_prefix("ckpt-")?.strip_suffix(".ckpt")?;
    if d.len() != 20 {
        return None;
    }
    d.parse().ok()
}

/// Checkpoints in `dir`, newest first.
///
/// # Errors
/// [`Error::Io`] (a missing directory is an empty list).
pub fn list(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let names = match vfs.list(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::from(e).in_file(dir)),
    };
    let mut out: Vec<(u64, PathBuf)> =
        names.iter().filter_map(|n| parse_checkpoint_name(n).map(|l| (l, dir.join(n)))).collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out)
}

/// Streams a checkpoint to its temporary file.
#[derive(Debug)]
pub struct CheckpointWriter {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    tmp: PathBuf,
    lsn: u64,
    generation: u64,
    file: Box<dyn VfsFile>,
    buf: Vec<u8>,
    crc: u32,
    bytes: u64,
    declared: u64,
    written: u64,
    /// The postcard-encoded graph section, written before the trailer.
    graph: Option<Vec<u8>>,
}

impl CheckpointWriter {
    /// Start the checkpoint of `image`'s counters at `image.lsn`, announcing
    /// `page_count` pages.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn new(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        generation: u64,
        counters: &StateImage,
        page_count: u64,
    ) -> Result<Self> {
        let tmp = dir.join(format!("ckpt-{:020}.tmp", counters.lsn));
        let file = vfs.create(&tmp).map_err(|e| Error::from(e).in_file(&tmp))?;
        let mut h = Vec::with_capacity(1 << 20);
        let graph =
            if counters.graph.is_empty() { None } else { Some(postcard::to_stdvec(&counters.graph)?) };
        h.extend_from_slice(&CKPT_MAGIC);
        put_u32(&mut h, CKPT_VERSION);
        put_u32(&mut h, if graph.is_some() { FLAG_GRAPH } else { 0 });
        put_u64(&mut h, generation);
        put_u64(&mut h, counters.lsn);
        put_u64(&mut h, counters.next_page);
        put_u64(&mut h, counters.next_delta);
        put_u64(&mut h, counters.timestamp);
        put_u64(&mut h, page_count);
        let c = crc(&h);
        put_u32(&mut h, c);
        put_u32(&mut h, 0);
        Ok(Self {
            vfs,
            dir: dir.to_path_buf(),
            tmp,
            lsn: counters.lsn,
            generation,
            file,
            buf: h,
            crc: 0,
            bytes: 0,
            declared: page_count,
            written: 0,
            graph,
        })
    }

    fn drain(&mut self) -> Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.bytes += self.buf.len() as u64;
        let r = self.file.write_all(&self.buf);
        self.buf.clear();
        r.map_err(|e| Error::from(e).in_file(&self.tmp))
    }

    /// Add the next page (ids ascending).
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::InvalidPage`] for a page the format cannot hold.
    pub fn page(
        &mut self,
        id: PageId,
        epoch: Epoch,
        location: Location,
        meta: &Metadata,
        bytes: &[u8],
    ) -> Result<()> {
        encode_page(id, epoch, location, meta, bytes, &mut self.buf)?;
        self.written += 1;
        if self.buf.len() >= 1 << 20 {
            self.drain()?;
        }
        Ok(())
    }

    /// Write the trailer, fsync, rename into place, fsync the directory.
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::Invariant`] when the page count differs from
    /// the one announced.
    pub fn finish(mut self) -> Result<(PathBuf, u64, u64)> {
        if self.written != self.declared {
            return Err(Error::Invariant(format!(
                "checkpoint announced {} pages, got {}",
                self.declared, self.written
            )));
        }
        if let Some(g) = self.graph.take() {
            put_u64(&mut self.buf, g.len() as u64);
            self.buf.extend_from_slice(&g);
        }
        let total = self.bytes + self.buf.len() as u64 + CKPT_TAIL_LEN as u64;
        self.buf.extend_from_slice(&CKPT_END);
        put_u64(&mut self.buf, self.written);
        put_u64(&mut self.buf, total);
        put_u32(&mut self.buf, 0);
        let c = crc32c::crc32c_append(self.crc, &self.buf);
        put_u32(&mut self.buf, c);
        self.drain()?;
        self.file.sync().map_err(|e| Error::from(e).in_file(&self.tmp))?;
        let fin = self.dir.join(checkpoint_name(self.lsn));
        self.vfs.rename(&self.tmp, &fin).map_err(|e| Error::from(e).in_file(&fin))?;
        self.vfs.sync_dir(&self.dir).map_err(|e| Error::from(e).in_file(&self.dir))?;
        let _ = self.generation;
        Ok((fin, self.written, total))
    }
}

/// Read and fully verify a checkpoint file.
///
/// # Errors
/// [`Error::Corrupt`] with the file and offset of the first problem; [`Error::Io`].
pub fn read(vfs: &dyn Vfs, path: &Path, limits: &Limits) -> Result<StateImage> {
    let buf = vfs.read(path).map_err(|e| Error::from(e).in_file(path))?;
    decode(&buf, limits).map_err(|e| e.in_file(path))
}

/// Decode a checkpoint held in memory.
///
/// # Errors
/// [`Error::Corrupt`] at the offset of the first problem; never panics.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<StateImage> {
    let mut r = Reader::new(buf, 0);
    let head = r.bytes(CKPT_HEAD_LEN, "checkpoint header")?;
    if head[..8] != CKPT_MAGIC {
        return Err(Error::corrupt_at(0, "not a checkpoint (bad magic)"));
    }
    let mut h = Reader::new(head, 0);
    h.bytes(8, "magic")?;
    let version = h.u32("version")?;
    let flags = h.u32("flags")?;
    let _generation = h.u64("generation")?;
    let lsn = h.u64("lsn")?;
    let next_page = h.u64("next page")?;
    let next_delta = h.u64("next delta")?;
    let timestamp = h.u64("timestamp")?;
    let count = h.u64("page count")?;
    let stored = h.u32("header crc")?;
    if crc(&head[..64]) != stored {
        return Err(Error::corrupt_at(64, "checkpoint header CRC mismatch"));
    }
    if version != CKPT_VERSION && version != 1 {
        return Err(Error::corrupt_at(8, format!("unsupported checkpoint version {version}")));
    }
    let known = if version == 1 { 0 } else { FLAG_GRAPH };
    if flags & !known != 0 || h.u32("reserved")? != 0 {
        return Err(Error::corrupt_at(12, "unknown checkpoint flags"));
    }
    if buf.len() < CKPT_HEAD_LEN + CKPT_TAIL_LEN {
        return Err(Error::corrupt_at(buf.len() as u64, "checkpoint has no trailer"));
    }
    let tail_at = buf.len() - CKPT_TAIL_LEN;
    let mut t = Reader::new(&buf[tail_at..], tail_at as u64);
    if t.bytes(8, "trailer magic")? != CKPT_END {
        return Err(Error::corrupt_at(tail_at as u64, "checkpoint trailer missing (truncated?)"));
    }
    let tcount = t.u64("trailer page count")?;
    let tlen = t.u64("trailer file length")?;
    let _ = t.u32("trailer reserved")?;
    let tcrc = t.u32("file crc")?;
    if tlen != buf.len() as u64 || tcount != count {
        return Err(Error::corrupt_at(tail_at as u64 + 8, "checkpoint trailer does not match the file"));
    }
    if crc(&buf[..buf.len() - 4]) != tcrc {
        return Err(Error::corrupt_at(buf.len() as u64 - 4, "checkpoint CRC mismatch"));
    }
    let mut image = StateImage { next_page, next_delta, timestamp, lsn, ..StateImage::default() };
    let mut pos = CKPT_HEAD_LEN;
    for i in 0..count {
        let (p, used) = decode_page(&buf[pos..tail_at], pos as u64, limits)?;
        if p.id.0 == 0 || p.id.0 >= next_page || image.pages.last_key_value().is_some_and(|(k, _)| *k >= p.id)
        {
            return Err(Error::corrupt_at(pos as u64 + 16, format!("page {i} has id {} out of order", p.id)));
        }
        image.pages.insert(p.id, p);
        pos += used;
    }
    if flags & FLAG_GRAPH != 0 {
        let mut g = Reader::new(&buf[pos..tail_at], pos as u64);
        let len = g.u64("graph section length")?;
        let bytes = g.bytes(usize::try_from(len).unwrap_or(usize::MAX), "graph section")?;
        image.graph = postcard::from_bytes(bytes)
            .map_err(|e| Error::corrupt_at(pos as u64 + 8, format!("malformed graph section: {e}")))?;
        pos += 8 + bytes.len();
    }
    if pos != tail_at {
        return Err(Error::corrupt_at(pos as u64, "bytes between the last page and the trailer"));
    }
    Ok(image)
}

/// Checkpoints that failed verification: `(file, error)`.
pub type Invalid = Vec<(PathBuf, Error)>;

/// The newest checkpoint that verifies, with LSN at most `max_lsn`, and the
/// newer ones that did not verify.
///
/// # Errors
/// [`Error::Io`] listing the directory.
pub fn newest_valid(
    vfs: &dyn Vfs,
    dir: &Path,
    limits: &Limits,
    max_lsn: Option<u64>,
) -> Result<(Option<(PathBuf, StateImage)>, Invalid)> {
    let mut bad = Vec::new();
    for (lsn, path) in list(vfs, dir)? {
        if max_lsn.is_some_and(|m| lsn > m) {
            continue;
        }
        match read(vfs, &path, limits) {
            Ok(img) if img.lsn == lsn => return Ok((Some((path, img)), bad)),
            Ok(_) => bad.push((
                path.clone(),
                Error::Corrupt {
                    file: Some(path),
                    offset: Some(24),
                    reason: "LSN differs from the file name".into(),
                },
            )),
            Err(e) => bad.push((path, e)),
        }
    }
    Ok((None, bad))
}
