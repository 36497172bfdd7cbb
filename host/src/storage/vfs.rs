//! The storage abstraction under the log and checkpoints.
//!
//! [`Vfs`] is the handful of file operations the persistence layer needs
//! (create-and-append, fsync, rename, directory sync, read, list, remove).
//! [`StdVfs`] maps them to `std::fs`; [`SimVfs`] is an in-memory file system
//! that keeps volatile and durable bytes apart, so a test can crash it at any
//! operation and see exactly what a power cut could leave behind (unsynced
//! writes dropped, torn, or reordered; unsynced renames lost), and can inject
//! write and fsync failures.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file open for appending.
pub trait VfsFile: Send + Debug {
    /// Append all of `buf`.
    ///
    /// # Errors
    /// The OS error; the file's contents past the last sync are then unknown.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Make every byte written so far durable (`fdatasync`).
    ///
    /// # Errors
    /// The OS error. A failed sync must never be retried and trusted.
    fn sync(&mut self) -> io::Result<()>;
    /// Append every slice of `bufs`, in order (one vectored `write` where the
    /// file system has it, so large buffers need not be gathered first).
    ///
    /// # Errors
    /// As [`VfsFile::write_all`].
    fn write_all_vectored(&mut self, bufs: &[&[u8]]) -> io::Result<()> {
        for b in bufs {
            self.write_all(b)?;
        }
        Ok(())
    }
    /// Ask the system to start writing what was written so far to the
    /// device, without waiting (a hint: a later [`VfsFile::sync`] then has
    /// less left to do). Durability still comes from `sync` alone.
    ///
    /// # Errors
    /// The OS error, if the hint itself fails.
    fn start_writeback(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A file open for reading at any offset.
pub trait VfsRead: Send + Debug {
    /// The file's length when it was opened.
    fn len(&self) -> u64;
    /// Whether the file was empty when it was opened.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fill `buf` from the bytes at `offset`.
    ///
    /// # Errors
    /// The OS error; [`io::ErrorKind::UnexpectedEof`] when the file ends first.
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// [`VfsRead`] that serves small reads from a window of the file read
/// ahead (one `read` of up to `window` bytes instead of one a call), and
/// passes larger reads, and any read the window cannot serve, to the file
/// itself, so that errors (an early end, an I/O error) are the file's own.
/// For decoders that read a file front to back in many small pieces.
#[derive(Debug)]
pub struct ReadAhead<'a> {
    src: &'a mut dyn VfsRead,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    at: u64,
    window: usize,
}

impl<'a> ReadAhead<'a> {
    /// Read `src` through a window of `window` bytes (allocated at the
    /// first small read).
    pub fn new(src: &'a mut dyn VfsRead, window: usize) -> Self {
        Self { src, buf: Vec::new(), at: 0, window }
    }
}

impl VfsRead for ReadAhead<'_> {
    fn len(&self) -> u64 {
        self.src.len()
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let want = buf.len() as u64;
        let end = offset.checked_add(want);
        // Within the window already read.
        if offset >= self.at && end.is_some_and(|e| e <= self.at + self.buf.len() as u64) {
            let from = (offset - self.at) as usize;
            buf.copy_from_slice(&self.buf[from..from + buf.len()]);
            return Ok(());
        }
        // Large reads, and reads past the end, go to the file as asked.
        if want > (self.window / 4) as u64 || end.is_none_or(|e| e > self.src.len()) {
            return self.src.read_exact_at(buf, offset);
        }
        let take = (self.src.len() - offset).min(self.window as u64) as usize;
        self.buf.resize(take, 0);
        if self.src.read_exact_at(&mut self.buf, offset).is_err() {
            self.buf.clear();
            return self.src.read_exact_at(buf, offset);
        }
        self.at = offset;
        buf.copy_from_slice(&self.buf[..buf.len()]);
        Ok(())
    }
}

/// [`VfsRead`] over bytes in memory.
#[derive(Debug)]
pub struct MemFile<T>(pub T);

impl<T: AsRef<[u8]> + Send + Debug> VfsRead for MemFile<T> {
    fn len(&self) -> u64 {
        self.0.as_ref().len() as u64
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = self.0.as_ref();
        let at = usize::try_from(offset).unwrap_or(usize::MAX);
        match src.get(at..).and_then(|rest| rest.get(..buf.len())) {
            Some(s) => {
                buf.copy_from_slice(s);
                Ok(())
            }
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the file")),
        }
    }
}

/// What [`Vfs::remove_keep_open`] hands back: dropping it releases the
/// removed file's storage.
pub type Removed = Option<Box<dyn Send + Debug>>;

/// What [`Vfs::lock_dir`] hands back: the directory stays held until it
/// is dropped.
pub type DirLock = Box<dyn Send + Sync + Debug>;

/// The file operations of the persistence layer.
pub trait Vfs: Send + Sync + Debug {
    /// Create `dir` and its parents.
    ///
    /// # Errors
    /// The OS error.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries in `dir`, sorted: regular files and anything
    /// else (a link, a directory, a pipe), so that a reader looking for its
    /// files by name meets an entry it cannot read instead of missing it
    /// (opening one that is not a regular file fails).
    ///
    /// # Errors
    /// The OS error.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole contents of a file.
    ///
    /// # Errors
    /// The OS error.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Create (or truncate) a file for appending.
    ///
    /// # Errors
    /// The OS error.
    fn create(&self, path: &Path) -> io::Result<Box<dyn VfsFile>>;
    /// Atomically rename `from` to `to`, replacing `to`.
    ///
    /// # Errors
    /// The OS error.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Remove a file.
    ///
    /// # Errors
    /// The OS error.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Make the directory's entries (creations, renames, removals) durable.
    ///
    /// # Errors
    /// The OS error.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Open a file for reading at any offset.
    ///
    /// # Errors
    /// The OS error.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn VfsRead>> {
        Ok(Box::new(MemFile(self.read(path)?)))
    }
    /// Remove a file's name now, like [`Vfs::remove`], but let its storage
    /// be released when the returned value is dropped (on a file system that
    /// discards freed blocks, freeing a large file takes tens of
    /// milliseconds; the caller can drop it off the critical path).
    ///
    /// # Errors
    /// The OS error.
    fn remove_keep_open(&self, path: &Path) -> io::Result<Removed> {
        self.remove(path).map(|()| None)
    }
    /// Open an existing file to append to it. The default says the file
    /// system cannot ([`io::ErrorKind::Unsupported`]): the log then starts
    /// a new segment instead of continuing the one a clean stop left.
    ///
    /// # Errors
    /// The OS error; `Unsupported` by default.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let _ = path;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Hold the log directory `dir` for one writing handle until the
    /// returned value is dropped; while it is held, another hold fails with
    /// an error of kind [`io::ErrorKind::WouldBlock`]. The default holds
    /// nothing (a file system without locks).
    ///
    /// # Errors
    /// The OS error, or `WouldBlock` when another holder has it.
    fn lock_dir(&self, dir: &Path) -> io::Result<Option<DirLock>> {
        let _ = dir;
        Ok(None)
    }
}

/// [`Vfs`] over `std::fs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdVfs;

#[derive(Debug)]
struct StdFile {
    file: std::fs::File,
    /// The writeback thread ([`VfsFile::start_writeback`]): its request
    /// channel and its result (the first error of its syncs).
    syncer: Option<(std::sync::mpsc::SyncSender<()>, std::thread::JoinHandle<io::Result<()>>)>,
}

impl VfsFile for StdFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        io::Write::write_all(&mut self.file, buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        // The writeback thread shares this file's description: an error of
        // its syncs may not show in ours, so it is taken from the thread.
        if let Some((tx, thread)) = self.syncer.take() {
            drop(tx);
            match thread.join() {
                Ok(r) => r?,
                Err(_) => return Err(io::Error::other("the writeback thread panicked")),
            }
        }
        self.file.sync_data()
    }
    fn start_writeback(&mut self) -> io::Result<()> {
        if self.syncer.is_none() {
            // A thread with its own handle syncs while this one writes on;
            // it ends at the next sync or when this file is dropped.
            let f = self.file.try_clone()?;
            let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
            let thread = std::thread::Builder::new().name("mmsb-writeback".into()).spawn(move || {
                while rx.recv().is_ok() {
                    f.sync_data()?;
                }
                Ok(())
            })?;
            self.syncer = Some((tx, thread));
        }
        if let Some((tx, _)) = &self.syncer {
            // One request waits at most: a request while a sync runs and
            // another waits is covered by the waiting one.
            let _ = tx.try_send(());
        }
        Ok(())
    }
    fn write_all_vectored(&mut self, bufs: &[&[u8]]) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> =
            bufs.iter().filter(|b| !b.is_empty()).map(|b| io::IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match io::Write::write_vectored(&mut self.file, rest) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct StdRead {
    file: std::fs::File,
    len: u64,
}

impl VfsRead for StdRead {
    fn len(&self) -> u64 {
        self.len
    }
    #[cfg(unix)]
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
    #[cfg(not(unix))]
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        io::Seek::seek(&mut self.file, io::SeekFrom::Start(offset))?;
        io::Read::read_exact(&mut self.file, buf)
    }
}

/// Open a regular file for reading, never through a link and never
/// blocking on a FIFO (a file swapped for a link after listing included).
fn open_regular(path: &Path) -> io::Result<(std::fs::File, u64)> {
    // Looked at before it is opened (opening a device or a pipe can do
    // something of its own), and again once open.
    if !std::fs::symlink_metadata(path)?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let f = o.open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok((f, meta.len()))
}

impl Vfs for StdVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, DIR_MODE);
        b.create(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        refuse_symlink(dir)?;
        list_entries(dir)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let (mut f, len) = open_regular(path)?;
        let mut out = Vec::new();
        out.try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX)).map_err(io::Error::other)?;
        io::Read::read_to_end(&mut f, &mut out)?;
        Ok(out)
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn VfsRead>> {
        let (file, len) = open_regular(path)?;
        Ok(Box::new(StdRead { file, len }))
    }
    fn remove_keep_open(&self, path: &Path) -> io::Result<Removed> {
        // An open descriptor keeps the inode, so the unlink only drops the
        // name; the blocks are freed when the descriptor is closed.
        let kept = open_regular(path).ok().map(|(f, _)| Box::new(f) as Box<dyn Send + Debug>);
        std::fs::remove_file(path)?;
        Ok(kept)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let mut o = std::fs::OpenOptions::new();
        o.create(true).write(true).truncate(true);
        Ok(Box::new(StdFile { file: owner_only_no_link(&mut o).open(path)?, syncer: None }))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let mut o = std::fs::OpenOptions::new();
        o.append(true);
        let file = owner_only_no_link(&mut o).open(path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        Ok(Box::new(StdFile { file, syncer: None }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<Option<DirLock>> {
        // The lock file is created in the directory itself, never through
        // a link to another one (O_NOFOLLOW guards only the file's name).
        refuse_symlink(dir)?;
        // Advisory locks on open files (flock on Unix): they go with the
        // file's last descriptor, so a process that dies releases them.
        // The directory itself is locked first: a lock file can be deleted
        // or replaced under a running writer, the directory it is in
        // cannot while it holds the log. The lock file is locked too, for
        // older versions, which lock only it.
        let held = |f: &std::fs::File| match f.try_lock() {
            Ok(()) => Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(io::Error::new(io::ErrorKind::WouldBlock, "the directory's lock is held"))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        };
        let d = std::fs::File::open(dir)?;
        held(&d)?;
        let mut o = std::fs::OpenOptions::new();
        o.create(true).read(true).write(true).truncate(false);
        let f = owner_only_no_link(&mut o).open(dir.join(crate::storage::files::LOCK_NAME))?;
        held(&f)?;
        Ok(Some(Box::new((d, f))))
    }
}

/// Files [`StdVfs`] creates are owner-only, and a planted link at their
/// name is an error, not a write through it to a file outside the state
/// directory.
fn owner_only_no_link(o: &mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW);
    }
    o
}

/// Mode of files [`StdVfs`] creates (owner read/write), before the umask.
pub const FILE_MODE: u32 = 0o600;
/// Mode of directories [`StdVfs`] creates (owner only), before the umask.
pub const DIR_MODE: u32 = 0o700;

/// The log directory is read through no link: a state directory from an
/// untrusted source cannot point the library at files elsewhere.
fn refuse_symlink(dir: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(dir)?.file_type().is_symlink() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is a symbolic link; state directories are not followed through links", dir.display()),
        ));
    }
    Ok(())
}

/// What survives a simulated crash of [`SimVfs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Only synced bytes and synced directory entries survive.
    DropUnsynced,
    /// Everything written survives (the OS flushed it all in time).
    KeepAll,
    /// A pseudo-random mix, reproducible from the seed: each unsynced write
    /// survives whole, torn (a prefix), or not at all, independently, so
    /// later writes can survive where earlier ones did not (holes read as
    /// zeros); a random prefix of the unsynced directory operations survives.
    Torn(u64),
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    synced: usize,
    /// Unsynced writes `(offset, len)` in issue order.
    pending: Vec<(usize, usize)>,
    /// A sync failed: the pending bytes were dropped from the page cache's
    /// dirty set and never reach the disk (Linux behaviour).
    lost: bool,
}

#[derive(Debug, Clone)]
enum NsOp {
    Link(PathBuf, usize),
    Unlink(PathBuf),
}

#[derive(Debug, Default)]
struct Sim {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    pending_ns: Vec<NsOp>,
    dirs: BTreeSet<PathBuf>,
    boot: u64,
    ops: u64,
    crash_after: Option<u64>,
    fail_write: Option<u64>,
    fail_sync: Option<u64>,
    /// The disk is full from this operation count on.
    full_after: Option<u64>,
    writes: u64,
    syncs: u64,
}

impl Sim {
    fn tick(&mut self) -> io::Result<()> {
        if self.crash_after.is_some_and(|n| self.ops >= n) {
            return Err(io::Error::other("simulated crash: the machine is down"));
        }
        self.ops += 1;
        Ok(())
    }

    /// [`Sim::tick`] for an operation that needs space: `Err` once the
    /// disk is full.
    fn tick_space(&mut self) -> io::Result<()> {
        let full = self.full_after.is_some_and(|n| self.ops >= n);
        self.tick()?;
        if full {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "injected: no space left on device"));
        }
        Ok(())
    }
}

/// An in-memory, crash-simulating [`Vfs`] for tests. Clones share one file system.
#[derive(Clone, Debug, Default)]
pub struct SimVfs {
    inner: Arc<parking_lot::Mutex<Sim>>,
}

#[derive(Debug)]
struct SimFile {
    sim: Arc<parking_lot::Mutex<Sim>>,
    inode: usize,
    boot: u64,
}

impl VfsFile for SimFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut s = self.sim.lock();
        if s.boot != self.boot {
            return Err(io::Error::other("stale handle from before a crash"));
        }
        let full = s.tick_space();
        if let Err(e) = &full {
            if e.kind() != io::ErrorKind::StorageFull {
                return full;
            }
        }
        s.writes += 1;
        if full.is_err() || s.fail_write.is_some_and(|n| s.writes >= n) {
            // A failed write may still have written a prefix.
            let ino = &mut s.inodes[self.inode];
            let at = ino.data.len();
            let part = buf.len() / 2;
            ino.data.extend_from_slice(&buf[..part]);
            ino.pending.push((at, part));
            return Err(full.err().unwrap_or_else(|| io::Error::other("injected write failure")));
        }
        let ino = &mut s.inodes[self.inode];
        let at = ino.data.len();
        ino.data.extend_from_slice(buf);
        ino.pending.push((at, buf.len()));
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.sim.lock();
        if s.boot != self.boot {
            return Err(io::Error::other("stale handle from before a crash"));
        }
        let full = s.tick_space();
        if let Err(e) = &full {
            if e.kind() != io::ErrorKind::StorageFull {
                return full;
            }
        }
        s.syncs += 1;
        if full.is_err() || s.fail_sync.is_some_and(|n| s.syncs >= n) {
            // A failed fsync (no space for delayed allocation, an I/O error)
            // drops the dirty pages.
            s.inodes[self.inode].lost = true;
            return Err(full.err().unwrap_or_else(|| io::Error::other("injected fsync failure")));
        }
        let ino = &mut s.inodes[self.inode];
        if !ino.lost {
            ino.synced = ino.data.len();
            ino.pending.clear();
        }
        Ok(())
    }
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", p.display()))
}

/// A small deterministic generator (SplitMix64) for crash choices.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SimVfs {
    /// An empty simulated file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of mutating operations (writes, syncs, creates, renames,
    /// removals, directory syncs) issued so far.
    pub fn ops(&self) -> u64 {
        self.inner.lock().ops
    }

    /// Once `n` operations in total have been issued,
    /// every later operation fails, as if the machine had lost power.
    pub fn crash_after(&self, n: u64) {
        self.inner.lock().crash_after = Some(n);
    }

    /// The `n`-th write from now on (1-based) and every one after it fail.
    pub fn fail_write_after(&self, n: u64) {
        let mut s = self.inner.lock();
        s.fail_write = Some(s.writes + n);
    }

    /// The `n`-th fsync from now on (1-based) and every one after it fail.
    pub fn fail_sync_after(&self, n: u64) {
        let mut s = self.inner.lock();
        s.fail_sync = Some(s.syncs + n);
    }

    /// From the `n`-th mutating operation from now on (1-based), the disk
    /// is full: file creations, writes (which may store a prefix first),
    /// fsyncs (which then drop the file's unsynced bytes, as Linux does),
    /// renames and directory syncs fail with
    /// [`io::ErrorKind::StorageFull`]; removals still work. Until
    /// [`SimVfs::free_space`] or a crash.
    pub fn disk_full_after(&self, n: u64) {
        let mut s = self.inner.lock();
        s.full_after = Some(s.ops + n.saturating_sub(1));
    }

    /// Space is freed: operations succeed again.
    pub fn free_space(&self) {
        self.inner.lock().full_after = None;
    }

    /// Simulate a power cut and reboot: decide what reached the disk
    /// according to `mode`, then start afresh (open handles go stale, fault
    /// injection is cleared).
    pub fn crash(&self, mode: CrashMode) {
        let mut s = self.inner.lock();
        let mut rng = match mode {
            CrashMode::Torn(seed) => seed ^ 0xA5A5_A5A5,
            _ => 0,
        };
        for ino in &mut s.inodes {
            let keep_all = mode == CrashMode::KeepAll && !ino.lost;
            if keep_all {
                ino.synced = ino.data.len();
                ino.pending.clear();
                continue;
            }
            let mut out = ino.data[..ino.synced].to_vec();
            if let (CrashMode::Torn(_), false) = (mode, ino.lost) {
                for &(at, len) in &ino.pending {
                    let keep = match splitmix(&mut rng) % 3 {
                        0 => 0,
                        1 => len,
                        _ => (splitmix(&mut rng) % (len as u64 + 1)) as usize,
                    };
                    if keep > 0 {
                        if out.len() < at + keep {
                            out.resize(at + keep, 0);
                        }
                        out[at..at + keep].copy_from_slice(&ino.data[at..at + keep]);
                    }
                }
            }
            ino.synced = out.len();
            ino.data = out;
            ino.pending.clear();
            ino.lost = false;
        }
        let names = match mode {
            CrashMode::KeepAll => s.names.clone(),
            CrashMode::DropUnsynced => s.durable_names.clone(),
            CrashMode::Torn(_) => {
                let n = if s.pending_ns.is_empty() {
                    0
                } else {
                    (splitmix(&mut rng) % (s.pending_ns.len() as u64 + 1)) as usize
                };
                let mut names = s.durable_names.clone();
                for op in &s.pending_ns[..n] {
                    match op {
                        NsOp::Link(p, i) => {
                            names.insert(p.clone(), *i);
                        }
                        NsOp::Unlink(p) => {
                            names.remove(p);
                        }
                    }
                }
                names
            }
        };
        s.names = names.clone();
        s.durable_names = names;
        s.pending_ns.clear();
        s.boot += 1;
        s.crash_after = None;
        s.fail_write = None;
        s.fail_sync = None;
        s.full_after = None;
    }

    /// Overwrite a file's bytes in place (durably), e.g. to flip a bit.
    ///
    /// # Errors
    /// `NotFound` when the file does not exist.
    pub fn corrupt(&self, path: &Path, f: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let mut s = self.inner.lock();
        let i = *s.names.get(path).ok_or_else(|| not_found(path))?;
        let ino = &mut s.inodes[i];
        f(&mut ino.data);
        ino.synced = ino.data.len();
        ino.pending.clear();
        Ok(())
    }

    /// A copy of the whole file system (volatile view), for replaying the
    /// same image many times.
    pub fn snapshot(&self) -> SimVfs {
        let s = self.inner.lock();
        let sim = Sim {
            inodes: s.inodes.clone(),
            names: s.names.clone(),
            durable_names: s.names.clone(),
            dirs: s.dirs.clone(),
            ..Sim::default()
        };
        SimVfs { inner: Arc::new(parking_lot::Mutex::new(sim)) }
    }
}

impl Vfs for SimVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.inner.lock();
        for a in dir.ancestors() {
            s.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.inner.lock();
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.inner.lock();
        let i = *s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(s.inodes[i].data.clone())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let mut s = self.inner.lock();
        s.tick_space()?;
        if !path.parent().is_some_and(|d| s.dirs.contains(d)) {
            return Err(not_found(path));
        }
        let i = s.inodes.len();
        s.inodes.push(Inode::default());
        s.names.insert(path.to_path_buf(), i);
        s.pending_ns.push(NsOp::Link(path.to_path_buf(), i));
        Ok(Box::new(SimFile { sim: self.inner.clone(), inode: i, boot: s.boot }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let s = self.inner.lock();
        let i = *s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(SimFile { sim: self.inner.clone(), inode: i, boot: s.boot }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.inner.lock();
        s.tick_space()?;
        let i = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), i);
        s.pending_ns.push(NsOp::Link(to.to_path_buf(), i));
        s.pending_ns.push(NsOp::Unlink(from.to_path_buf()));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.inner.lock();
        s.tick()?;
        s.names.remove(path).ok_or_else(|| not_found(path))?;
        s.pending_ns.push(NsOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.inner.lock();
        s.tick_space()?;
        // Every pending entry operation in this directory becomes durable.
        let ops = std::mem::take(&mut s.pending_ns);
        let mut rest = Vec::new();
        for op in ops {
            let p = match &op {
                NsOp::Link(p, _) | NsOp::Unlink(p) => p.clone(),
            };
            if p.parent() == Some(dir) {
                match op {
                    NsOp::Link(p, i) => {
                        s.durable_names.insert(p, i);
                    }
                    NsOp::Unlink(p) => {
                        s.durable_names.remove(&p);
                    }
                }
            } else {
                rest.push(op);
            }
        }
        s.pending_ns = rest;
        Ok(())
    }
}

/// Names of the entries directly in `dir`, of any kind, sorted; names
/// that are not UTF-8 are skipped. The engine's readers list with this and
/// refuse, by name, an entry they expect to be a file and that is not one
/// (they look before they open, and open without following links).
///
/// # Errors
/// The error of reading the directory.
pub fn list_entries(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        if let Some(n) = e?.file_name().to_str() {
            out.push(n.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writeback_starts_keep_every_byte_and_sync_reports_success() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut f = StdVfs.create(&p).unwrap();
        let mut want = Vec::new();
        for i in 0..20u8 {
            let chunk = vec![i; 100_000];
            f.write_all(&chunk).unwrap();
            want.extend_from_slice(&chunk);
            f.start_writeback().unwrap();
            if i == 10 {
                // A sync between writebacks ends the thread; the next starts another.
                f.sync().unwrap();
            }
        }
        f.sync().unwrap();
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), want);
    }

    #[test]
    fn unsynced_data_and_names_are_lost_at_a_crash() {
        let v = SimVfs::new();
        let d = Path::new("/x");
        v.create_dir_all(d).unwrap();
        let mut f = v.create(&d.join("a")).unwrap();
        f.write_all(b"hello").unwrap();
        f.sync().unwrap();
        f.write_all(b" world").unwrap();
        v.crash(CrashMode::DropUnsynced);
        assert!(v.read(&d.join("a")).is_err(), "the name was never synced");
        let mut f = v.create(&d.join("b")).unwrap();
        f.write_all(b"hello").unwrap();
        f.sync().unwrap();
        v.sync_dir(d).unwrap();
        f.write_all(b" world").unwrap();
        v.crash(CrashMode::DropUnsynced);
        assert_eq!(v.read(&d.join("b")).unwrap(), b"hello");
        assert!(f.write_all(b"x").is_err(), "handles go stale at a crash");
    }

    #[test]
    fn read_ahead_reads_what_the_file_reads_and_fails_as_it_fails() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = MemFile(bytes.clone());
        let mut ra = ReadAhead::new(&mut file, 1024);
        assert_eq!(ra.len(), 10_000);
        // Forward, backward, across window edges, large, at the end.
        let mut seed = 17u64;
        for _ in 0..2_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = seed % 10_050;
            let n = [0usize, 1, 8, 255, 256, 257, 1024, 3000][(seed >> 40) as usize % 8];
            let mut got = vec![0u8; n];
            let r = ra.read_exact_at(&mut got, at);
            let end = at as usize + n;
            if end <= bytes.len() {
                r.unwrap();
                assert_eq!(&got[..], &bytes[at as usize..end], "{n} bytes at {at}");
            } else {
                assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof, "{n} bytes at {at}");
            }
        }
        let mut one = [0u8; 1];
        assert_eq!(ra.read_exact_at(&mut one, u64::MAX).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn failed_fsync_loses_the_pending_bytes() {
        let v = SimVfs::new();
        let d = Path::new("/x");
        v.create_dir_all(d).unwrap();
        let mut f = v.create(&d.join("a")).unwrap();
        v.sync_dir(d).unwrap();
        f.write_all(b"abc").unwrap();
        v.fail_sync_after(1);
        assert!(f.sync().is_err());
        v.crash(CrashMode::KeepAll);
        assert_eq!(v.read(&d.join("a")).unwrap(), b"");
    }
}
