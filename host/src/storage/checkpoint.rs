//! Checkpoints: every page (v2 page images) with its epoch and metadata,
//! plus the commit path's counters, as of one LSN; or an increment: the
//! pages changed since an earlier checkpoint (its base), as patch images of
//! their changed blocks, with the pages deleted since. A full checkpoint
//! and the increments on it form a chain; reading a checkpoint reads its
//! chain ([`read`]).
//!
//! Written to `ckpt-<lsn>.tmp`, fsynced, renamed to `ckpt-<lsn>.ckpt`, and
//! the directory fsynced: a checkpoint file either exists whole or not at
//! all. Recovery uses the newest one that verifies, then the log after it.

use crate::alloc::PageAllocator;
use crate::storage::codec::page::{encode_head, encode_patch_head, read_entry, PageEntry};
use crate::storage::codec::{crc, crc_append, crc_combine, put_u32, put_u64, Limits, Reader};
use crate::storage::files::{checkpoint_name, parse_checkpoint_name, CKPT_END, CKPT_MAGIC};
use crate::storage::image::StateImage;
use crate::storage::vfs::{MemFile, Vfs, VfsFile, VfsRead};
use crate::types::page::{Location, Metadata};
use crate::{Error, Result};
use shared_types::{Epoch, Lsn, PageId};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Version of full checkpoints (2 added the dependency-graph section;
/// version 1 files, which have none, are still read).
pub const CKPT_VERSION: u32 = 2;
/// Version of increments ([`FLAG_INCREMENT`]); otherwise as version 2.
pub const CKPT_INCREMENT_VERSION: u32 = 3;
/// Header flag: a dependency-graph section follows the pages.
pub const FLAG_GRAPH: u32 = 1;
/// Header flag (version 3): the file is an increment on the checkpoint it
/// names (its base); the increment section follows the header.
pub const FLAG_INCREMENT: u32 = 2;
/// Size of the fixed part of the increment section.
pub const INCREMENT_HEAD_LEN: usize = 32;
/// The longest chain a reader follows (increments on one full checkpoint).
pub const MAX_CHAIN: u32 = 64;
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
    /// A full checkpoint, or an increment on an earlier one.
    pub kind: CheckpointKind,
}

/// Whether a checkpoint holds every page or the changes since its base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointKind {
    /// Every page, whole.
    Full,
    /// The pages changed since `base` (the checkpoint at that LSN): the
    /// changed blocks of pages that were in it, whole pages created since,
    /// and the ids of pages deleted since.
    Increment {
        /// LSN of the checkpoint it applies to.
        base: Lsn,
        /// Increments from the chain's full checkpoint to this one (1: on
        /// the full checkpoint itself).
        depth: u32,
    },
}

/// The base an increment names: a checkpoint file's LSN, its fingerprint
/// and its depth in its chain (0: a full one).
///
/// The fingerprint is XXH3-64 over the file's header (and increment
/// section), the CRC of each page image in order, and the graph section:
/// everything the file holds, through the image CRCs. (The file CRC cannot
/// serve: the CRC of an image followed by its own CRC is a constant, so
/// the file CRC does not depend on the images' contents, which their own
/// CRCs protect.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// LSN of the checkpoint.
    pub lsn: u64,
    /// Its fingerprint.
    pub fingerprint: u64,
    /// Increments between the chain's full checkpoint and it.
    pub depth: u32,
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
    crate::storage::files::check_names(dir, &names)?;
    let mut out: Vec<(u64, PathBuf)> =
        names.iter().filter_map(|n| parse_checkpoint_name(n).map(|l| (l, dir.join(n)))).collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out)
}

/// Pages with at least this many data bytes are written straight from the
/// page's memory (one vectored write, no copy into the buffer).
const DIRECT_MIN: u64 = 64 << 10;
/// ... provided their present ranges average at least this many bytes
/// (many tiny ranges are cheaper to gather).
const DIRECT_MIN_RANGE: u64 = 4 << 10;
/// Pages of at least this many bytes get their data CRC during the presence
/// scan; smaller ones are checksummed from the buffer.
const SCAN_CRC_MIN: usize = 4 << 10;
/// Buffered bytes are written once the buffer holds this much.
const BUFFER_BYTES: usize = 1 << 20;
/// Bytes written between two writeback starts ([`VfsFile::start_writeback`]):
/// the device writes the first part of a large checkpoint while the rest
/// is scanned and copied, so the final sync waits for the last part only.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Streams a checkpoint to its temporary file.
///
/// Small pages are encoded into a buffer that is written when full; a large
/// page is written from its own memory with one vectored write (head, data
/// ranges, CRC), and its CRC32C is computed once: the file CRC takes it by
/// CRC combination instead of a second pass over the bytes.
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
    /// The fingerprint being computed (see [`Link`]).
    fingerprint: Fingerprint,
    bytes: u64,
    declared: u64,
    written: u64,
    /// The postcard-encoded graph section, written before the trailer.
    graph: Option<Vec<u8>>,
    /// Head of the page being written (large pages).
    head: Vec<u8>,
    /// Data ranges of the page being written.
    ranges: Vec<std::ops::Range<usize>>,
    /// [`CheckpointWriter::bytes`] at the last writeback start.
    writeback_at: u64,
    /// Whether the temporary file was renamed into place (else dropping
    /// the writer removes it).
    renamed: bool,
}

/// A checkpoint's fingerprint being computed (see [`Link`]).
struct Fingerprint(xxhash_rust::xxh3::Xxh3);

impl Fingerprint {
    fn update(&mut self, b: &[u8]) {
        self.0.update(b);
    }

    fn digest(&self) -> u64 {
        self.0.digest()
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({:016x})", self.0.digest())
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        // A checkpoint that failed (a full disk, an I/O error) or was given
        // up leaves no temporary file behind. Best effort: start removes
        // temporaries too.
        if !self.renamed {
            let _ = self.vfs.remove(&self.tmp);
        }
    }
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
        Self::start(vfs, dir, generation, counters, page_count, None)
    }

    /// Start an increment on `base` at `counters.lsn`: `deleted` (ascending)
    /// are the pages of the base's state gone since, and `entry_count`
    /// pages follow ([`CheckpointWriter::page`] for pages created since,
    /// [`CheckpointWriter::patch`] for pages of the base), ids ascending.
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::Invariant`] for a chain at [`MAX_CHAIN`].
    pub fn new_increment(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        generation: u64,
        counters: &StateImage,
        base: Link,
        deleted: &[PageId],
        entry_count: u64,
    ) -> Result<Self> {
        if base.depth >= MAX_CHAIN {
            return Err(Error::Invariant(format!("a chain holds at most {MAX_CHAIN} increments")));
        }
        Self::start(vfs, dir, generation, counters, entry_count, Some((base, deleted)))
    }

    fn start(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        generation: u64,
        counters: &StateImage,
        page_count: u64,
        increment: Option<(Link, &[PageId])>,
    ) -> Result<Self> {
        let tmp = dir.join(format!("ckpt-{:020}.tmp", counters.lsn));
        let file = vfs.create(&tmp).map_err(|e| Error::from(e).in_file(&tmp))?;
        let mut h = Vec::with_capacity(BUFFER_BYTES + (64 << 10));
        let graph =
            if counters.graph.is_empty() { None } else { Some(postcard::to_stdvec(&counters.graph)?) };
        let mut flags = if graph.is_some() { FLAG_GRAPH } else { 0 };
        if increment.is_some() {
            flags |= FLAG_INCREMENT;
        }
        h.extend_from_slice(&CKPT_MAGIC);
        put_u32(&mut h, if increment.is_some() { CKPT_INCREMENT_VERSION } else { CKPT_VERSION });
        put_u32(&mut h, flags);
        put_u64(&mut h, generation);
        put_u64(&mut h, counters.lsn);
        put_u64(&mut h, counters.next_page);
        put_u64(&mut h, counters.next_delta);
        put_u64(&mut h, counters.timestamp);
        put_u64(&mut h, page_count);
        let c = crc(&h);
        put_u32(&mut h, c);
        put_u32(&mut h, 0);
        if let Some((base, deleted)) = increment {
            put_u64(&mut h, base.lsn);
            put_u64(&mut h, base.fingerprint);
            put_u32(&mut h, base.depth + 1);
            put_u32(&mut h, 0);
            put_u64(&mut h, deleted.len() as u64);
            for id in deleted {
                put_u64(&mut h, id.0);
            }
        }
        let mut fingerprint = Fingerprint(xxhash_rust::xxh3::Xxh3::new());
        fingerprint.update(&h);
        Ok(Self {
            vfs,
            dir: dir.to_path_buf(),
            tmp,
            lsn: counters.lsn,
            generation,
            file,
            buf: h,
            crc: 0,
            fingerprint,
            bytes: 0,
            declared: page_count,
            written: 0,
            graph,
            head: Vec::new(),
            ranges: Vec::new(),
            writeback_at: 0,
            renamed: false,
        })
    }

    fn drain(&mut self) -> Result<()> {
        self.crc = crc_append(self.crc, &self.buf);
        self.bytes += self.buf.len() as u64;
        let r = self.file.write_all(&self.buf);
        self.buf.clear();
        r.map_err(|e| Error::from(e).in_file(&self.tmp))?;
        self.writeback();
        Ok(())
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
        self.head.clear();
        // Pages past a few KiB get their data CRC in the presence scan (one
        // read of the page's memory) and the page CRC by combination.
        let large = bytes.len() >= SCAN_CRC_MIN;
        let mut data_crc = 0u32;
        let total = encode_head(
            id,
            epoch,
            location,
            meta,
            bytes,
            &mut self.head,
            &mut self.ranges,
            large.then_some(&mut data_crc),
        )?;
        self.image(bytes, total, large, data_crc)
    }

    /// Add the next page of an increment as a patch of its changed bytes
    /// `ranges` (ascending, disjoint, not adjacent, each starting on a
    /// 64-byte block and ending on one or at the page's end) (ids
    /// ascending, among the pages). Reads only those bytes.
    ///
    /// # Errors
    /// As [`CheckpointWriter::page`]; [`Error::InvalidPage`] for ranges
    /// that break those rules.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        id: PageId,
        epoch: Epoch,
        location: Location,
        meta: &Metadata,
        bytes: &[u8],
        ranges: &[std::ops::Range<usize>],
    ) -> Result<()> {
        self.head.clear();
        let total = encode_patch_head((id, epoch, location, meta), bytes.len(), ranges, &mut self.head)?;
        self.ranges.clear();
        self.ranges.extend(ranges.iter().cloned());
        let data_crc = ranges.iter().fold(0, |c, r| crc_append(c, &bytes[r.clone()]));
        self.image(bytes, total, true, data_crc)
    }

    /// [`CheckpointWriter::patch`] of a page of `len` bytes whose changed
    /// bytes `ranges` are given `packed` in order (as a GPU page's gathered
    /// blocks are).
    ///
    /// # Errors
    /// As [`CheckpointWriter::patch`]; [`Error::InvalidPage`] when `packed`
    /// is not as long as the ranges.
    #[allow(clippy::too_many_arguments)]
    pub fn patch_packed(
        &mut self,
        id: PageId,
        epoch: Epoch,
        location: Location,
        meta: &Metadata,
        len: usize,
        ranges: &[std::ops::Range<usize>],
        packed: &[u8],
    ) -> Result<()> {
        let want: usize = ranges.iter().map(|r| r.len()).sum();
        if want != packed.len() {
            return Err(Error::InvalidPage {
                reason: format!("patch of page {id}: {} bytes given for {want} changed", packed.len()),
            });
        }
        self.head.clear();
        let total = encode_patch_head((id, epoch, location, meta), len, ranges, &mut self.head)?;
        self.ranges.clear();
        if !packed.is_empty() {
            self.ranges.push(0..packed.len());
        }
        self.image(packed, total, true, crc(packed))
    }

    /// Write the image whose head is in `self.head` and data ranges in
    /// `self.ranges` (of `bytes`), `total` bytes with its CRC.
    fn image(&mut self, bytes: &[u8], total: u64, large: bool, data_crc: u32) -> Result<()> {
        let data_len = total - self.head.len() as u64 - 4;
        let direct = data_len >= DIRECT_MIN && data_len / self.ranges.len() as u64 >= DIRECT_MIN_RANGE;
        if !direct {
            let start = self.buf.len();
            self.buf.extend_from_slice(&self.head);
            for r in &self.ranges {
                self.buf.extend_from_slice(&bytes[r.clone()]);
            }
            let c = if large {
                crc_combine(crc(&self.head), data_crc, data_len)
            } else {
                crc(&self.buf[start..])
            };
            put_u32(&mut self.buf, c);
            self.fingerprint.update(&c.to_le_bytes());
            self.written += 1;
            if self.buf.len() >= BUFFER_BYTES {
                self.drain()?;
            }
            return Ok(());
        }
        let c = crc_combine(crc(&self.head), data_crc, data_len);
        self.drain()?;
        let tail = c.to_le_bytes();
        self.fingerprint.update(&tail);
        let mut slices: Vec<&[u8]> = Vec::with_capacity(self.ranges.len() + 2);
        slices.push(&self.head);
        slices.extend(self.ranges.iter().map(|r| &bytes[r.clone()]));
        slices.push(&tail);
        self.file.write_all_vectored(&slices).map_err(|e| Error::from(e).in_file(&self.tmp))?;
        self.crc = crc_combine(self.crc, crc_append(c, &tail), total);
        self.bytes += total;
        self.written += 1;
        self.writeback();
        Ok(())
    }

    /// Start the device on what was written, every [`WRITEBACK_EVERY`] bytes.
    fn writeback(&mut self) {
        if self.bytes - self.writeback_at >= WRITEBACK_EVERY {
            self.writeback_at = self.bytes;
            // A hint: without it the final sync does all of the work.
            let _ = self.file.start_writeback();
        }
    }

    /// Write the trailer, fsync, rename into place, fsync the directory.
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::Invariant`] when the page count differs from
    /// the one announced.
    /// Returns the file, its page count, size and fingerprint (see [`Link`]).
    pub fn finish(mut self) -> Result<(PathBuf, u64, u64, u64)> {
        if self.written != self.declared {
            return Err(Error::Invariant(format!(
                "checkpoint announced {} pages, got {}",
                self.declared, self.written
            )));
        }
        if let Some(g) = self.graph.take() {
            put_u64(&mut self.buf, g.len() as u64);
            self.buf.extend_from_slice(&g);
            self.fingerprint.update(&g);
        }
        let total = self.bytes + self.buf.len() as u64 + CKPT_TAIL_LEN as u64;
        self.buf.extend_from_slice(&CKPT_END);
        put_u64(&mut self.buf, self.written);
        put_u64(&mut self.buf, total);
        put_u32(&mut self.buf, 0);
        let c = crc_append(self.crc, &self.buf);
        put_u32(&mut self.buf, c);
        self.drain()?;
        self.file.sync().map_err(|e| Error::from(e).in_file(&self.tmp))?;
        let fin = self.dir.join(checkpoint_name(self.lsn));
        self.vfs.rename(&self.tmp, &fin).map_err(|e| Error::from(e).in_file(&fin))?;
        self.renamed = true;
        self.vfs.sync_dir(&self.dir).map_err(|e| Error::from(e).in_file(&self.dir))?;
        let _ = self.generation;
        Ok((fin, self.written, total, self.fingerprint.digest()))
    }
}

/// Write a full checkpoint of `image` (every page, its counters and graph,
/// at `image.lsn`) into `dir` as [`CheckpointWriter`] does: a temporary
/// file, fsynced, renamed into place. What a replica that holds a state as
/// an image (not a live handle) checkpoints with. Returns the file and its
/// size.
///
/// # Errors
/// [`Error::Io`]; [`Error::InvalidPage`] for a page the format cannot hold.
pub fn write_image(
    vfs: Arc<dyn Vfs>,
    dir: &Path,
    generation: u64,
    image: &StateImage,
) -> Result<(PathBuf, u64)> {
    let mut w = CheckpointWriter::new(vfs, dir, generation, image, image.pages.len() as u64)?;
    for (id, p) in &image.pages {
        w.page(*id, p.epoch, p.location, &p.meta, &p.bytes)?;
    }
    let (path, _, bytes, _) = w.finish()?;
    Ok((path, bytes))
}

/// A checkpoint file decoded on its own.
#[derive(Debug)]
pub enum CheckpointFile {
    /// A full checkpoint: the state.
    Full(StateImage),
    /// An increment: to be applied to its base.
    Increment(Increment),
}

/// An increment decoded on its own (see [`CheckpointWriter::new_increment`]).
#[derive(Debug)]
pub struct Increment {
    /// The checkpoint it applies to, with that file's CRC and chain depth.
    pub base: Link,
    /// The pages of the base's state deleted since, ascending.
    pub deleted: Vec<PageId>,
    /// Pages changed since the base, ids ascending: whole (pages created
    /// since, or pages of the base written whole) or patches of pages of
    /// the base.
    pub entries: Vec<PageEntry>,
    /// The counters, LSN and graph as of this checkpoint (no pages).
    pub counters: StateImage,
}

impl Increment {
    /// Apply to `image`, the state of the base; `at` is the increment's
    /// file for errors.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the increment does not fit the state (a
    /// deleted page that is not there, a patch of a page missing or of
    /// another length or metadata).
    pub fn apply_to(self, image: &mut StateImage, at: &Path) -> Result<()> {
        let bad = |reason: String| Error::Corrupt { file: Some(at.to_path_buf()), offset: None, reason };
        for id in &self.deleted {
            if image.pages.remove(id).is_none() {
                return Err(bad(format!("increment deletes page {id}, which its base does not hold")));
            }
        }
        for e in self.entries {
            match e {
                // A page created since the base, or one of the base
                // written whole (changed before its blocks were tracked).
                PageEntry::Full(p) => {
                    image.pages.insert(p.id, p);
                }
                PageEntry::Patch(p) => match image.pages.get_mut(&p.id) {
                    Some(page) => p.apply_to(page, 0).map_err(|e| e.in_file(at))?,
                    None => {
                        return Err(bad(format!(
                            "increment patches page {}, which its base does not hold",
                            p.id
                        )))
                    }
                },
            }
        }
        let c = self.counters;
        (image.next_page, image.next_delta, image.timestamp, image.lsn, image.graph) =
            (c.next_page, c.next_delta, c.timestamp, c.lsn, c.graph);
        Ok(())
    }
}

/// A checkpoint file decoded on its own, with its size and CRC.
#[derive(Debug)]
pub struct Decoded {
    /// What it holds.
    pub file: CheckpointFile,
    /// File size.
    pub len: u64,
    /// Its fingerprint (see [`Link`]).
    pub fingerprint: u64,
}

/// A checkpoint's chain, as read: its full checkpoint and the increments
/// on it, up to the checkpoint read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The checkpoint read: its LSN, CRC and depth (0: a full checkpoint).
    pub head: Link,
    /// The files, the full checkpoint first, with their LSNs and sizes.
    pub files: Vec<(u64, PathBuf, u64)>,
    /// The pages of the state at the head, ascending.
    pub pages: Vec<PageId>,
}

impl Chain {
    /// Size of the full checkpoint.
    pub fn full_bytes(&self) -> u64 {
        self.files.first().map_or(0, |f| f.2)
    }

    /// Total size of the increments.
    pub fn increment_bytes(&self) -> u64 {
        self.files.iter().skip(1).map(|f| f.2).sum()
    }
}

/// Read and fully verify a checkpoint: the file, and for an increment its
/// chain (each base by name in the same directory, each link checked by
/// the base file's CRC), applied in order.
///
/// # Errors
/// [`Error::Corrupt`] with the file and offset of the first problem
/// (possibly in a base); [`Error::Io`].
pub fn read(vfs: &dyn Vfs, path: &Path, limits: &Limits) -> Result<StateImage> {
    read_with(vfs, path, limits, None)
}

/// [`read`], with page bytes read straight into buffers of `alloc` when
/// given (no intermediate copy of the file).
///
/// # Errors
/// As [`read`].
pub fn read_with(
    vfs: &dyn Vfs,
    path: &Path,
    limits: &Limits,
    alloc: Option<&PageAllocator>,
) -> Result<StateImage> {
    read_chain(vfs, path, limits, alloc).map(|(img, _)| img)
}

/// [`read_with`], also returning the chain it read.
///
/// # Errors
/// As [`read`].
pub fn read_chain(
    vfs: &dyn Vfs,
    path: &Path,
    limits: &Limits,
    alloc: Option<&PageAllocator>,
) -> Result<(StateImage, Chain)> {
    let dir = path.parent().unwrap_or(Path::new(""));
    let first = read_file(vfs, path, limits, alloc)?;
    let head_fp = first.fingerprint;
    // From the file read back to the chain's full checkpoint.
    let mut increments: Vec<(PathBuf, u64, Increment)> = Vec::new();
    let mut cur = (path.to_path_buf(), first);
    let base = loop {
        let (p, d) = cur;
        match d.file {
            CheckpointFile::Full(img) => break (p, d.len, img),
            CheckpointFile::Increment(inc) => {
                let link = inc.base;
                let bp = dir.join(checkpoint_name(link.lsn));
                let lsn = inc.counters.lsn;
                increments.push((p.clone(), d.len, inc));
                let bad = |reason: String| Error::Corrupt { file: Some(p.clone()), offset: Some(72), reason };
                let based = read_file(vfs, &bp, limits, alloc).map_err(|e| {
                    bad(format!("its base, the checkpoint at LSN {}, does not verify: {e}", link.lsn))
                })?;
                let (blsn, bdepth) = match &based.file {
                    CheckpointFile::Full(img) => (img.lsn, 0),
                    CheckpointFile::Increment(i) => (i.counters.lsn, i.base.depth + 1),
                };
                if based.fingerprint != link.fingerprint || blsn != link.lsn || bdepth != link.depth {
                    return Err(bad(format!(
                        "its base {} is not the checkpoint it was written on (fingerprint, LSN or depth differs)",
                        bp.display()
                    )));
                }
                if blsn >= lsn {
                    return Err(bad(format!("its base's LSN {blsn} is not before its own {lsn}")));
                }
                cur = (bp, based);
            }
        }
    };
    let (bpath, blen, mut image) = base;
    let depth = increments.len() as u32;
    let mut files = vec![(image.lsn, bpath, blen)];
    for (p, len, inc) in increments.into_iter().rev() {
        let lsn = inc.counters.lsn;
        inc.apply_to(&mut image, &p)?;
        files.push((lsn, p, len));
    }
    let pages = image.pages.keys().copied().collect();
    let chain = Chain { head: Link { lsn: image.lsn, fingerprint: head_fp, depth }, files, pages };
    Ok((image, chain))
}

/// Read and verify one checkpoint file on its own (an increment is not
/// applied: see [`read`]).
///
/// # Errors
/// As [`read`].
pub fn read_file(
    vfs: &dyn Vfs,
    path: &Path,
    limits: &Limits,
    alloc: Option<&PageAllocator>,
) -> Result<Decoded> {
    let mut f = vfs.open_read(path).map_err(|e| Error::from(e).in_file(path))?;
    // Entry heads, small pages and CRCs come from one read per window.
    let mut f = crate::storage::vfs::ReadAhead::new(f.as_mut(), READ_AHEAD);
    decode_from(&mut f, limits, alloc).map_err(|e| e.in_file(path))
}

/// The window of a checkpoint read ahead ([`crate::storage::vfs::ReadAhead`]):
/// reads of up to a quarter of it are served from it.
const READ_AHEAD: usize = 256 << 10;

/// Decode a full checkpoint held in memory.
///
/// # Errors
/// [`Error::Corrupt`] at the offset of the first problem, or for an
/// increment (which needs its chain: [`read`], or [`decode_file`] for the
/// increment alone); never panics.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<StateImage> {
    match decode_file(buf, limits)?.file {
        CheckpointFile::Full(img) => Ok(img),
        CheckpointFile::Increment(_) => {
            Err(Error::corrupt_at(12, "an increment: it is read with its chain (checkpoint::read)"))
        }
    }
}

/// Decode a checkpoint file held in memory, full or increment.
///
/// # Errors
/// [`Error::Corrupt`] at the offset of the first problem; never panics.
pub fn decode_file(buf: &[u8], limits: &Limits) -> Result<Decoded> {
    decode_from(&mut MemFile(buf), limits, None)
}

fn read_at(src: &mut dyn VfsRead, buf: &mut [u8], at: u64) -> Result<()> {
    src.read_exact_at(buf, at).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::corrupt_at(at, "the checkpoint ended early (changed while read?)")
        } else {
            Error::from(e)
        }
    })
}

/// Decode a checkpoint from `src`, reading each part once: every page
/// image's CRC is checked as it is read, and the file CRC is assembled from
/// the pieces (CRC combination) and checked before anything is returned.
fn decode_from(src: &mut dyn VfsRead, limits: &Limits, alloc: Option<&PageAllocator>) -> Result<Decoded> {
    let file_len = src.len();
    let mut head = [0u8; CKPT_HEAD_LEN];
    let head_len = file_len.min(CKPT_HEAD_LEN as u64) as usize;
    read_at(src, &mut head[..head_len], 0)?;
    let head = &head[..head_len];
    let mut r = Reader::new(head, 0);
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
    let known = match version {
        1 => 0,
        CKPT_VERSION => FLAG_GRAPH,
        CKPT_INCREMENT_VERSION => FLAG_GRAPH | FLAG_INCREMENT,
        _ => return Err(Error::corrupt_at(8, format!("unsupported checkpoint version {version}"))),
    };
    let increment = flags & FLAG_INCREMENT != 0;
    if flags & !known != 0 || h.u32("reserved")? != 0 || (version == CKPT_INCREMENT_VERSION) != increment {
        return Err(Error::corrupt_at(12, "unknown checkpoint flags"));
    }
    if file_len < (CKPT_HEAD_LEN + CKPT_TAIL_LEN) as u64 {
        return Err(Error::corrupt_at(file_len, "checkpoint has no trailer"));
    }
    let tail_at = file_len - CKPT_TAIL_LEN as u64;
    let mut tail = [0u8; CKPT_TAIL_LEN];
    read_at(src, &mut tail, tail_at)?;
    let mut t = Reader::new(&tail, tail_at);
    if t.bytes(8, "trailer magic")? != CKPT_END {
        return Err(Error::corrupt_at(tail_at, "checkpoint trailer missing (truncated?)"));
    }
    let tcount = t.u64("trailer page count")?;
    let tlen = t.u64("trailer file length")?;
    if t.u32("trailer reserved")? != 0 {
        return Err(Error::corrupt_at(tail_at + 24, "checkpoint trailer reserved field is not zero"));
    }
    let tcrc = t.u32("file crc")?;
    if tlen != file_len || tcount != count {
        return Err(Error::corrupt_at(tail_at + 8, "checkpoint trailer does not match the file"));
    }
    let mut fcrc = crc(head);
    let mut fp = xxhash_rust::xxh3::Xxh3::new();
    fp.update(head);
    let mut image = StateImage { next_page, next_delta, timestamp, lsn, ..StateImage::default() };
    let mut pos = CKPT_HEAD_LEN as u64;
    let mut inc = None;
    if increment {
        let (i, used, c) = read_increment_head(src, pos, tail_at, lsn, next_page)?;
        fcrc = crc_append(fcrc, &c);
        fp.update(&c);
        pos += used;
        inc = Some(i);
    }
    let mut entries = Vec::new();
    let mut last: Option<PageId> = None;
    for i in 0..count {
        let (e, used, pcrc, own) = read_entry(src, pos, tail_at - pos, pos, limits, alloc, increment)?;
        fp.update(&own.to_le_bytes());
        let id = e.id();
        if id.0 == 0
            || id.0 >= next_page
            || last.is_some_and(|k| k >= id)
            || inc.as_ref().is_some_and(|(_, del): &IncrementHead| del.binary_search(&id).is_ok())
        {
            return Err(Error::corrupt_at(pos + 16, format!("page {i} has id {id} out of order")));
        }
        last = Some(id);
        fcrc = crc_combine(fcrc, pcrc, used);
        match e {
            PageEntry::Full(p) if !increment => {
                image.pages.insert(p.id, p);
            }
            e => entries.push(e),
        }
        pos += used;
    }
    let mut graph = None;
    if flags & FLAG_GRAPH != 0 {
        let mut lb = [0u8; 8];
        if tail_at - pos < 8 {
            return Err(Error::corrupt_at(pos, "graph section length: need 8 bytes"));
        }
        read_at(src, &mut lb, pos)?;
        let len = u64::from_le_bytes(lb);
        if len > tail_at - pos - 8 {
            return Err(Error::corrupt_at(
                pos,
                format!("graph section of {len} bytes does not fit the file"),
            ));
        }
        let mut g = vec![0u8; len as usize];
        read_at(src, &mut g, pos + 8)?;
        fcrc = crc_append(crc_append(fcrc, &lb), &g);
        fp.update(&g);
        graph = Some((pos + 8, g));
        pos += 8 + len;
    }
    if pos != tail_at {
        return Err(Error::corrupt_at(pos, "bytes between the last page and the trailer"));
    }
    if crc_append(fcrc, &tail[..CKPT_TAIL_LEN - 4]) != tcrc {
        return Err(Error::corrupt_at(file_len - 4, "checkpoint CRC mismatch"));
    }
    if let Some((at, g)) = graph {
        image.graph = postcard::from_bytes(&g)
            .map_err(|e| Error::corrupt_at(at, format!("malformed graph section: {e}")))?;
        // The section is the canonical encoding of what it decodes to: no
        // trailing bytes, no overlong varints, pages and edges ascending
        // and each once (postcard alone would take all of those).
        if postcard::to_stdvec(&image.graph).ok().as_deref() != Some(&g[..]) {
            return Err(Error::corrupt_at(
                at,
                "graph section not in its canonical encoding (trailing bytes, an overlong varint, or entries out of order or repeated)",
            ));
        }
    }
    let file = match inc {
        Some((base, deleted)) => {
            CheckpointFile::Increment(Increment { base, deleted, entries, counters: image })
        }
        None => CheckpointFile::Full(image),
    };
    Ok(Decoded { file, len: file_len, fingerprint: fp.digest() })
}

/// An increment's base and deleted pages.
type IncrementHead = (Link, Vec<PageId>);

/// Read the increment section at `pos` (before `tail_at`) of an increment
/// at `lsn`: its base link and deleted pages, the bytes it occupied and
/// those bytes (for the file CRC).
fn read_increment_head(
    src: &mut dyn VfsRead,
    pos: u64,
    tail_at: u64,
    lsn: u64,
    next_page: u64,
) -> Result<(IncrementHead, u64, Vec<u8>)> {
    if tail_at - pos < INCREMENT_HEAD_LEN as u64 {
        return Err(Error::corrupt_at(pos, "increment section: need 32 bytes"));
    }
    let mut b = [0u8; INCREMENT_HEAD_LEN];
    read_at(src, &mut b, pos)?;
    let mut r = Reader::new(&b, pos);
    let base_lsn = r.u64("base lsn")?;
    let base_fp = r.u64("base fingerprint")?;
    let depth = r.u32("chain depth")?;
    if r.u32("increment reserved")? != 0 {
        return Err(Error::corrupt_at(pos + 20, "increment section reserved field is not zero"));
    }
    let n = r.u64("deleted count")?;
    if base_lsn >= lsn {
        return Err(Error::corrupt_at(
            pos,
            format!("base LSN {base_lsn} is not before the increment's {lsn}"),
        ));
    }
    if depth == 0 || depth > MAX_CHAIN {
        return Err(Error::corrupt_at(pos + 16, format!("chain depth {depth} out of range 1..={MAX_CHAIN}")));
    }
    let room = (tail_at - pos - INCREMENT_HEAD_LEN as u64) / 8;
    if n > room {
        return Err(Error::corrupt_at(pos + 24, format!("{n} deleted pages do not fit the file")));
    }
    let mut ids = vec![0u8; n as usize * 8];
    read_at(src, &mut ids, pos + INCREMENT_HEAD_LEN as u64)?;
    let mut deleted: Vec<PageId> = Vec::with_capacity(n as usize);
    for (k, c) in ids.chunks_exact(8).enumerate() {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        let id = PageId(u64::from_le_bytes(a));
        if id.0 == 0 || id.0 >= next_page || deleted.last().is_some_and(|l| *l >= id) {
            return Err(Error::corrupt_at(
                pos + INCREMENT_HEAD_LEN as u64 + 8 * k as u64,
                format!("deleted page {id} out of order"),
            ));
        }
        deleted.push(id);
    }
    let mut all = b.to_vec();
    all.extend_from_slice(&ids);
    let link = Link { lsn: base_lsn, fingerprint: base_fp, depth: depth - 1 };
    Ok(((link, deleted), all.len() as u64, all))
}

/// A checkpoint that verified: its file, its state and its chain.
pub type Found = (PathBuf, StateImage, Chain);

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
    let (found, bad) = newest_valid_with(vfs, dir, limits, max_lsn, None)?;
    Ok((found.map(|(p, img, _)| (p, img)), bad))
}

/// [`newest_valid`], with page bytes read into buffers of `alloc` when
/// given, and the chain of the checkpoint found.
///
/// # Errors
/// [`Error::Io`] listing the directory.
pub fn newest_valid_with(
    vfs: &dyn Vfs,
    dir: &Path,
    limits: &Limits,
    max_lsn: Option<u64>,
    alloc: Option<&PageAllocator>,
) -> Result<(Option<Found>, Invalid)> {
    let mut bad = Vec::new();
    for (lsn, path) in list(vfs, dir)? {
        if max_lsn.is_some_and(|m| lsn > m) {
            continue;
        }
        match read_chain(vfs, &path, limits, alloc) {
            Ok((img, chain)) if img.lsn == lsn => return Ok((Some((path, img, chain)), bad)),
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

/// What [`retire`] removed.
#[derive(Debug, Default)]
pub(crate) struct Retired {
    /// Log segments removed.
    pub(crate) segments: usize,
    /// Checkpoints removed.
    pub(crate) checkpoints: usize,
    /// The removed files, still open: their storage is released when these
    /// are dropped (on another thread, by the engine).
    pub(crate) released: Vec<crate::storage::vfs::Removed>,
}

/// Remove from log directory `dir` what a full checkpoint at LSN `lsn`
/// made unnecessary: the checkpoints before it and the segments before
/// `new_seq` (the segment the log went on to). An increment, and a
/// checkpoint written by a clean stop, retire nothing (the chain's files,
/// the log since its full checkpoint and older checkpoints stay: a replay
/// may start from any of them, and a damaged increment is bridged by the
/// log). A removal that fails is skipped: recovery passes over such
/// extras.
///
/// # Errors
/// [`Error::Io`] when the directory cannot be listed.
pub(crate) fn retire(vfs: &dyn Vfs, dir: &Path, lsn: u64, new_seq: u64) -> Result<Retired> {
    let mut out = Retired::default();
    for (l, p) in list(vfs, dir)? {
        if l < lsn {
            if let Ok(r) = vfs.remove_keep_open(&p) {
                out.checkpoints += 1;
                out.released.push(r);
            }
        }
    }
    if let Ok(names) = vfs.list(dir) {
        for n in names {
            if crate::storage::files::parse_segment_name(&n).is_some_and(|s| s < new_seq) {
                if let Ok(r) = vfs.remove_keep_open(&dir.join(&n)) {
                    out.segments += 1;
                    out.released.push(r);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::vfs::StdVfs;

    #[test]
    fn a_missing_directory_lists_no_checkpoints_and_any_other_failure_is_an_error() -> Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(list(&StdVfs, &dir.path().join("none"))?.is_empty(), "a directory that is not there");
        // A file where the directory should be: not "no checkpoints".
        let file = dir.path().join("file");
        std::fs::write(&file, b"x")?;
        let err = list(&StdVfs, &file).expect_err("a file is not a directory");
        assert!(matches!(err, Error::Io { .. }), "{err}");
        Ok(())
    }

    fn pages() -> Vec<(PageId, Vec<u8>)> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x as u8) | 1
                })
                .collect()
        };
        // Dense and large: written straight from the page.
        let dense = noise(100_000);
        // Large, a few long present ranges, a short last block.
        let mut ranges = vec![0u8; (1 << 20) + 5];
        for k in (0..ranges.len()).step_by(3 * 8192) {
            let n = 8192.min(ranges.len() - k);
            ranges[k..k + n].copy_from_slice(&noise(n));
        }
        // Large, every other block present: gathered into the buffer.
        let mut every_other = vec![0u8; 1 << 20];
        for k in (0..every_other.len()).step_by(128) {
            every_other[k + 3] = 9;
        }
        vec![
            (PageId(1), noise(8)),
            (PageId(2), dense),
            (PageId(4), vec![0; 1 << 20]),
            (PageId(5), ranges),
            (PageId(6), noise(100)),
            (PageId(7), every_other),
        ]
    }

    fn write(dir: &Path, pages: &[(PageId, Vec<u8>)]) -> Result<PathBuf> {
        let counters =
            StateImage { next_page: 10, next_delta: 3, timestamp: 7, lsn: 5, ..StateImage::default() };
        let mut w = CheckpointWriter::new(Arc::new(StdVfs), dir, 1, &counters, pages.len() as u64)?;
        let meta: Metadata = [("k".to_string(), b"v".to_vec())].into();
        for (id, bytes) in pages {
            w.page(*id, Epoch(id.0 * 3), Location::Cpu, &meta, bytes)?;
        }
        Ok(w.finish()?.0)
    }

    /// `bytes` with its header changed by `edit` and both CRCs (the
    /// header's and the file's) made right again.
    fn reheader(bytes: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut b = bytes.to_vec();
        edit(&mut b[..CKPT_HEAD_LEN]);
        head_crc(&mut b);
        file_crc(&mut b);
        b
    }

    /// Make the header CRC of checkpoint bytes `b` right.
    fn head_crc(b: &mut [u8]) {
        let h = crc(&b[..64]);
        b[64..68].copy_from_slice(&h.to_le_bytes());
    }

    /// Make the file CRC (the last four bytes) of checkpoint `b` right.
    fn file_crc(b: &mut [u8]) {
        let n = b.len();
        let f = crc(&b[..n - 4]);
        b[n - 4..].copy_from_slice(&f.to_le_bytes());
    }

    /// Header edit: the `u32` at `at` set to `v`.
    fn set(h: &mut [u8], at: usize, v: u32) {
        h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn header_versions_flags_and_the_trailer_are_checked() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let pages = pages();
        let bytes = std::fs::read(write(dir.path(), &pages)?)?;
        let lim = Limits::default();
        // Only the CRCs recomputed: it reads.
        assert_eq!(decode(&reheader(&bytes, |_| {}), &lim)?.pages.len(), pages.len());
        // Version 1 (before graphs were kept): the same pages.
        let v1 = decode(&reheader(&bytes, |h| set(h, 8, 1)), &lim)?;
        assert_eq!(v1.pages.len(), pages.len());
        assert!(pages.iter().all(|(id, b)| v1.pages[id].bytes == *b), "version 1 pages");
        let refused = [
            (
                "a graph flag in version 1",
                reheader(&bytes, |h| {
                    set(h, 8, 1);
                    set(h, 12, FLAG_GRAPH);
                }),
            ),
            ("an unknown flag", reheader(&bytes, |h| set(h, 12, 4))),
            ("a reserved field that is not zero", reheader(&bytes, |h| set(h, 68, 1))),
            (
                "the increment version without its flag",
                reheader(&bytes, |h| set(h, 8, CKPT_INCREMENT_VERSION)),
            ),
            ("the increment flag in a full checkpoint", reheader(&bytes, |h| set(h, 12, FLAG_INCREMENT))),
        ];
        for (what, b) in refused {
            let err = decode_file(&b, &lim).expect_err(what);
            assert!(err.to_string().contains("unknown checkpoint flags"), "{what}: {err}");
        }
        // A whole header and less than a trailer after it.
        let err = decode_file(&bytes[..CKPT_HEAD_LEN + 10], &lim).expect_err("no trailer");
        assert!(err.to_string().contains("has no trailer"), "{err}");
        Ok(())
    }

    /// A checkpoint file made by hand: the header of `like` with `count`
    /// pages, `flags` and `next_page` (its CRC made right), then `body`,
    /// then a trailer that matches, its CRC right.
    fn assemble(like: &[u8], count: u64, flags: u32, next_page: u64, body: &[u8]) -> Vec<u8> {
        let mut b = like[..CKPT_HEAD_LEN].to_vec();
        set(&mut b, 12, flags);
        b[32..40].copy_from_slice(&next_page.to_le_bytes());
        b[56..64].copy_from_slice(&count.to_le_bytes());
        head_crc(&mut b);
        b.extend_from_slice(body);
        let total = (b.len() + CKPT_TAIL_LEN) as u64;
        b.extend_from_slice(&CKPT_END);
        put_u64(&mut b, count);
        put_u64(&mut b, total);
        put_u32(&mut b, 0);
        let c = crc(&b);
        put_u32(&mut b, c);
        b
    }

    /// Page entries with these ids (8 bytes each).
    fn entries(ids: &[u64]) -> Result<(Vec<u8>, Vec<u64>)> {
        let (mut out, mut at) = (Vec::new(), Vec::new());
        for &id in ids {
            at.push((CKPT_HEAD_LEN + out.len()) as u64);
            crate::storage::codec::page::encode_page(
                PageId(id),
                Epoch(1),
                Location::Cpu,
                &Metadata::default(),
                &[id as u8; 8],
                &mut out,
            )?;
        }
        Ok((out, at))
    }

    /// `b` is refused as corrupt at `offset`, for a reason naming `what`.
    fn refused_at(b: &[u8], offset: u64, what: &str) {
        match decode_file(b, &Limits::default()) {
            Err(Error::Corrupt { offset: Some(o), reason, .. }) if o == offset && reason.contains(what) => {}
            other => panic!("expected {what:?} at {offset}, got {other:?}"),
        }
    }

    #[test]
    fn hand_made_checkpoints_are_refused_at_their_first_problem() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let like = std::fs::read(write(dir.path(), &pages())?)?;
        let (two, at) = entries(&[3, 7])?;
        // As made, it reads: the cases below differ from it in one thing.
        let ok = assemble(&like, 2, 0, 10, &two);
        let img = decode(&ok, &Limits::default())?;
        assert_eq!(img.pages.keys().map(|p| p.0).collect::<Vec<_>>(), [3, 7]);
        let tail = ok.len() - CKPT_TAIL_LEN;
        // The trailer: its reserved field, its page count, its length.
        let retail = |edit: &dyn Fn(&mut [u8])| {
            let mut b = ok.clone();
            edit(&mut b[tail..]);
            file_crc(&mut b);
            b
        };
        refused_at(&retail(&|t| t[24] = 1), tail as u64 + 24, "trailer reserved field is not zero");
        refused_at(&retail(&|t| t[8] = 3), tail as u64 + 8, "trailer does not match");
        refused_at(&retail(&|t| t[16] ^= 1), tail as u64 + 8, "trailer does not match");
        // A page image that runs into the trailer.
        let (one, o) = entries(&[3])?;
        refused_at(&assemble(&like, 1, 0, 10, &one[..one.len() - 5]), o[0] + 8, "does not fit the input");
        // Page ids: zero, past the header's next page, out of order, twice.
        let out_of_order = "out of order";
        let (zero, z) = entries(&[0])?;
        refused_at(&assemble(&like, 1, 0, 10, &zero), z[0] + 16, out_of_order);
        refused_at(&assemble(&like, 2, 0, 7, &two), at[1] + 16, out_of_order);
        for ids in [[7, 3], [3, 3]] {
            let (b, at) = entries(&ids)?;
            refused_at(&assemble(&like, 2, 0, 10, &b), at[1] + 16, out_of_order);
        }
        // The graph section: no room for its length, an empty section
        // (its length fits; it decodes to nothing), a length past the
        // trailer by a little and by much.
        let end = (CKPT_HEAD_LEN + two.len()) as u64;
        let graph = |extra: &[u8]| assemble(&like, 2, FLAG_GRAPH, 10, &[&two[..], extra].concat());
        refused_at(&graph(&[1, 2, 3, 4]), end, "need 8 bytes");
        refused_at(&graph(&0u64.to_le_bytes()), end + 8, "malformed graph section");
        for len in [14u64, 1000] {
            let section = [&len.to_le_bytes()[..], &[0u8; 10]].concat();
            refused_at(&graph(&section), end, "does not fit the file");
        }
        Ok(())
    }

    /// An increment made by hand from the header of `like` (LSN 5): no
    /// pages, next page 10, then `body` (its increment section).
    fn increment(like: &[u8], body: &[u8]) -> Vec<u8> {
        reheader(&assemble(like, 0, FLAG_INCREMENT, 10, body), |h| set(h, 8, CKPT_INCREMENT_VERSION))
    }

    /// An increment section: base LSN and fingerprint, chain depth, the
    /// reserved field, then `count` and the deleted `ids`.
    fn section(base_lsn: u64, depth: u32, reserved: u32, count: u64, ids: &[u64]) -> Vec<u8> {
        let mut b = Vec::new();
        put_u64(&mut b, base_lsn);
        put_u64(&mut b, 0xF00D);
        put_u32(&mut b, depth);
        put_u32(&mut b, reserved);
        put_u64(&mut b, count);
        for &id in ids {
            put_u64(&mut b, id);
        }
        b
    }

    #[test]
    fn hand_made_increment_sections_are_refused_at_their_first_problem() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let like = std::fs::read(write(dir.path(), &pages())?)?;
        let pos = CKPT_HEAD_LEN as u64;
        // As made, it reads (the deepest chain, every byte of room used).
        let ok = increment(&like, &section(4, MAX_CHAIN, 0, 2, &[2, 5]));
        match decode_file(&ok, &Limits::default())?.file {
            CheckpointFile::Increment(i) => {
                assert_eq!(i.deleted, [PageId(2), PageId(5)]);
                assert_eq!((i.base.lsn, i.base.fingerprint, i.base.depth), (4, 0xF00D, MAX_CHAIN - 1));
            }
            CheckpointFile::Full(_) => panic!("an increment read as a full checkpoint"),
        }
        refused_at(&increment(&like, &[0u8; 20]), pos, "need 32 bytes");
        refused_at(&increment(&like, &section(4, 1, 1, 0, &[])), pos + 20, "reserved field is not zero");
        for base in [5, 6] {
            refused_at(&increment(&like, &section(base, 1, 0, 0, &[])), pos, "is not before");
        }
        for depth in [0, MAX_CHAIN + 1] {
            refused_at(&increment(&like, &section(4, depth, 0, 0, &[])), pos + 16, "chain depth");
        }
        refused_at(&increment(&like, &section(4, 1, 0, 3, &[2, 5])), pos + 24, "do not fit the file");
        let first = pos + INCREMENT_HEAD_LEN as u64;
        for (ids, bad) in [(&[0u64, 5][..], 0), (&[2, 10], 1), (&[5, 2], 1), (&[5, 5], 1)] {
            let b = increment(&like, &section(4, 1, 0, 2, ids));
            refused_at(&b, first + 8 * bad, "out of order");
        }
        // The file CRC, checked last.
        let mut b = ok.clone();
        let n = b.len();
        b[n - 1] ^= 1;
        refused_at(&b, n as u64 - 4, "checkpoint CRC mismatch");
        Ok(())
    }

    /// A file whose length, as opened, is more than it holds now (it
    /// shrank while it was read).
    #[derive(Debug)]
    struct Shrunk(MemFile<Vec<u8>>, u64);

    impl VfsRead for Shrunk {
        fn len(&self) -> u64 {
            self.1
        }
        fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.0.read_exact_at(buf, offset)
        }
    }

    #[test]
    fn a_checkpoint_that_ends_while_it_is_read_is_corrupt_where_it_ended() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let bytes = std::fs::read(write(dir.path(), &pages())?)?;
        let mut f = Shrunk(MemFile(bytes[..1000].to_vec()), bytes.len() as u64);
        let err = decode_from(&mut f, &Limits::default(), None).expect_err("the trailer is gone");
        let tail = (bytes.len() - CKPT_TAIL_LEN) as u64;
        assert!(
            matches!(&err, Error::Corrupt { offset: Some(o), reason, .. } if *o == tail && reason.contains("ended early")),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn large_and_small_pages_round_trip_through_every_reader() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let pages = pages();
        let path = write(dir.path(), &pages)?;
        let bytes = std::fs::read(&path)?;
        let alloc = PageAllocator::default();
        let images = [
            read(&StdVfs, &path, &Limits::default())?,
            read_with(&StdVfs, &path, &Limits::default(), Some(&alloc))?,
            decode(&bytes, &Limits::default())?,
        ];
        for img in &images {
            assert_eq!((img.lsn, img.next_page, img.next_delta, img.timestamp), (5, 10, 3, 7));
            assert_eq!(img.pages.len(), pages.len());
            for (id, b) in &pages {
                let p = &img.pages[id];
                assert_eq!(p.bytes, *b, "page {id}");
                assert_eq!(p.epoch, Epoch(id.0 * 3));
            }
        }
        // The streamed file is byte-identical to the buffered encoding.
        let mut expect = bytes[..CKPT_HEAD_LEN].to_vec();
        let meta: Metadata = [("k".to_string(), b"v".to_vec())].into();
        for (id, b) in &pages {
            crate::storage::codec::page::encode_page(
                *id,
                Epoch(id.0 * 3),
                Location::Cpu,
                &meta,
                b,
                &mut expect,
            )?;
        }
        expect.extend_from_slice(&bytes[expect.len()..]);
        assert_eq!(expect, bytes);
        Ok(())
    }

    #[test]
    fn corruption_anywhere_in_a_large_page_is_detected() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = write(dir.path(), &pages())?;
        let bytes = std::fs::read(&path)?;
        let mut at = 0;
        while at < bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            assert!(decode(&b, &Limits::default()).is_err(), "flip at {at}");
            std::fs::write(&path, &b)?;
            assert!(read_with(&StdVfs, &path, &Limits::default(), Some(&PageAllocator::default())).is_err());
            at += 9973;
        }
        for cut in [0, 10, CKPT_HEAD_LEN, 5000, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], &Limits::default()).is_err(), "cut at {cut}");
        }
        Ok(())
    }

    /// The patch of gathered bytes (a GPU page's path) is the patch of the
    /// page's bytes (a CPU page's path), byte for byte, for changed blocks
    /// anywhere: none, the first, the short last, everything.
    #[test]
    fn a_patch_of_packed_bytes_is_the_patch_of_the_page() -> Result<()> {
        let pages = pages();
        let counters = StateImage { lsn: 9, next_page: 10, ..StateImage::default() };
        let base = Link { lsn: 4, fingerprint: 7, depth: 0 };
        let block = crate::registry::CHANGE_BLOCK;
        let sets: [&dyn Fn(usize) -> bool; 5] =
            [&|_| false, &|k| k == 0, &|k| k % 3 == 1, &|k| k >= 200, &|_| true];
        for (n, changed) in sets.iter().enumerate() {
            let dir = tempfile::tempdir()?;
            let mut out = Vec::new();
            for packed in [false, true] {
                let mut w = CheckpointWriter::new_increment(
                    Arc::new(StdVfs),
                    dir.path(),
                    1,
                    &counters,
                    base,
                    &[],
                    pages.len() as u64,
                )?;
                for (id, bytes) in &pages {
                    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
                    for k in (0..bytes.len().div_ceil(block)).filter(|&k| changed(k)) {
                        let r = k * block..((k + 1) * block).min(bytes.len());
                        match ranges.last_mut() {
                            Some(l) if l.end == r.start => l.end = r.end,
                            _ => ranges.push(r),
                        }
                    }
                    let meta = Metadata::new();
                    if packed {
                        let data: Vec<u8> =
                            ranges.iter().flat_map(|r| bytes[r.clone()].iter().copied()).collect();
                        w.patch_packed(*id, Epoch(3), Location::Cpu, &meta, bytes.len(), &ranges, &data)?;
                    } else {
                        w.patch(*id, Epoch(3), Location::Cpu, &meta, bytes, &ranges)?;
                    }
                }
                let (path, ..) = w.finish()?;
                out.push(std::fs::read(path)?);
            }
            assert_eq!(out[0], out[1], "set {n}");
            // Applied to the pages, the patches give the pages back.
            if let CheckpointFile::Increment(i) = decode_file(&out[0], &Limits::default())?.file {
                for (e, (id, bytes)) in i.entries.iter().zip(&pages) {
                    let PageEntry::Patch(p) = e else { panic!("a patch") };
                    let mut page = crate::PageImage {
                        id: *id,
                        epoch: Epoch(0),
                        location: Location::Cpu,
                        meta: Metadata::new(),
                        bytes: vec![0; bytes.len()].into(),
                    };
                    p.apply_to(&mut page, 0)?;
                    for r in &p.ranges {
                        assert_eq!(page.bytes[r.clone()], bytes[r.clone()], "set {n} page {id}");
                    }
                }
            }
            match decode_file(&out[0], &Limits::default())?.file {
                CheckpointFile::Increment(i) => assert_eq!(i.entries.len(), pages.len()),
                CheckpointFile::Full(_) => panic!("an increment"),
            }
        }
        Ok(())
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn patch_ranges_must_be_whole_blocks_in_order() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let counters = StateImage { lsn: 9, next_page: 10, ..StateImage::default() };
        let base = Link { lsn: 4, fingerprint: 7, depth: 0 };
        let mut w =
            CheckpointWriter::new_increment(Arc::new(StdVfs), dir.path(), 1, &counters, base, &[], 1)?;
        let bytes = vec![1u8; 1000];
        let meta = Metadata::new();
        let bad_ranges: [&[std::ops::Range<usize>]; 6] = [
            &[1..64],           // not on a block
            &[0..63],           // does not end on one
            &[0..64, 64..128],  // adjacent: one range
            &[128..192, 0..64], // out of order
            &[0..1001],         // past the end
            &[64..64],          // empty
        ];
        for bad in bad_ranges {
            assert!(
                matches!(
                    w.patch(PageId(1), Epoch(1), Location::Cpu, &meta, &bytes, bad),
                    Err(Error::InvalidPage { .. })
                ),
                "{bad:?}"
            );
        }
        // Ending at the page's end is whole.
        w.patch(PageId(1), Epoch(1), Location::Cpu, &meta, &bytes, &[0..64, 960..1000])?;
        assert!(matches!(
            w.patch_packed(PageId(2), Epoch(1), Location::Cpu, &meta, 1000, &[0..64], &[0; 63]),
            Err(Error::InvalidPage { .. })
        ));
        Ok(())
    }
}
