//! Offline tools over a state directory, as library functions for the
//! `mmsb` command line: [`inspect`], [`verify`], [`replay`]. Each returns a
//! report with a `Display` impl; none panics on any input.

use crate::storage::codec::Limits;
use crate::storage::log::reader::{self, SegmentSummary};
use crate::storage::log::RecordType;
use crate::storage::recovery::RecoveryMode;
use crate::storage::vfs::{StdVfs, Vfs};
use crate::{Error, Lsn, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A checkpoint file as seen by [`inspect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointSummary {
    /// The file.
    pub path: PathBuf,
    /// LSN from its name.
    pub lsn: u64,
    /// Its size.
    pub bytes: u64,
    /// Pages, when it verifies.
    pub pages: Option<usize>,
    /// Why it does not verify.
    pub error: Option<String>,
    /// Its chain, when it verifies: the LSNs of the full checkpoint and of
    /// each increment up to this one (one LSN: a full checkpoint).
    pub chain: Vec<u64>,
}

/// What [`inspect`] found.
#[derive(Clone, Debug, Default)]
pub struct InspectReport {
    /// Checkpoints, newest first.
    pub checkpoints: Vec<CheckpointSummary>,
    /// Segments in order.
    pub segments: Vec<SegmentSummary>,
    /// Record count and framed bytes per record type name.
    pub by_type: BTreeMap<&'static str, (u64, u64)>,
    /// Deltas held by the derived records (each holds a propagation's).
    pub derived_deltas: u64,
    /// LSN range of the valid records.
    pub lsn_range: Option<(u64, u64)>,
    /// Tail or corruption notes.
    pub notes: Vec<String>,
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "checkpoints: {}", self.checkpoints.len())?;
        for c in &self.checkpoints {
            match (&c.pages, &c.error) {
                (Some(p), _) => {
                    write!(f, "  {} LSN {} {} bytes, {p} pages", c.path.display(), c.lsn, c.bytes)?;
                    match c.chain.len() {
                        0 | 1 => writeln!(f, ", full")?,
                        n => {
                            let lsns: Vec<String> = c.chain.iter().map(u64::to_string).collect();
                            writeln!(f, ", increment {} of the chain LSN {}", n - 1, lsns.join(" <- "))?
                        }
                    }
                }
                (_, Some(e)) => writeln!(f, "  {} LSN {} INVALID: {e}", c.path.display(), c.lsn)?,
                _ => {}
            }
        }
        writeln!(f, "segments: {}", self.segments.len())?;
        for s in &self.segments {
            let gen = s.header.map_or("?".to_string(), |h| h.generation.to_string());
            let lsns = s.lsns.map_or("-".to_string(), |(a, b)| format!("{a}..={b}"));
            writeln!(
                f,
                "  {} gen {gen} {} bytes {} records LSN {lsns}",
                s.path.display(),
                s.bytes,
                s.records
            )?;
        }
        writeln!(f, "records by type:")?;
        for (t, (n, b)) in &self.by_type {
            write!(f, "  {t:<12} {n:>10} records {b:>14} bytes")?;
            if *t == "derived" {
                write!(f, " ({} deltas)", self.derived_deltas)?;
            }
            writeln!(f)?;
        }
        match self.lsn_range {
            Some((a, b)) => writeln!(f, "LSN range: {a}..={b}")?,
            None => writeln!(f, "LSN range: empty")?,
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// Describe the log and checkpoints of `state_dir`.
///
/// # Errors
/// [`Error::Io`] when the directory cannot be listed.
pub fn inspect(state_dir: &Path) -> Result<InspectReport> {
    inspect_with(&StdVfs, state_dir, &Limits::default())
}

/// [`inspect`] over any [`Vfs`].
///
/// # Errors
/// [`Error::Io`].
pub fn inspect_with(vfs: &dyn Vfs, state_dir: &Path, limits: &Limits) -> Result<InspectReport> {
    let dir = crate::storage::files::log_dir(state_dir);
    let mut rep = InspectReport::default();
    for (lsn, path) in crate::storage::checkpoint::list(vfs, &dir)? {
        let bytes = vfs.read(&path).map(|b| b.len() as u64).unwrap_or(0);
        let (pages, error, chain) = match crate::storage::checkpoint::read_chain(vfs, &path, limits, None) {
            Ok((img, chain)) => (Some(img.pages.len()), None, chain.files.iter().map(|f| f.0).collect()),
            Err(e) => (None, Some(e.to_string()), Vec::new()),
        };
        rep.checkpoints.push(CheckpointSummary { path, lsn, bytes, pages, error, chain });
    }
    // The log is read after the newest valid checkpoint, as recovery reads
    // it: segments the checkpoint made unnecessary may be gone.
    let mut after = rep.checkpoints.iter().find(|c| c.error.is_none()).map_or(0, |c| c.lsn);
    let names = vfs.list(&dir).unwrap_or_default();
    if let Some(first) = crate::storage::recovery::log_starts_after(vfs, &dir, &names, after) {
        // No usable checkpoint covers the start of the log: say so once,
        // and describe the log from where it starts.
        let covered = if after == 0 {
            "there is no checkpoint that verifies".to_string()
        } else {
            format!("the newest checkpoint that verifies is at LSN {after}")
        };
        rep.notes.push(match crate::storage::recovery::unreadable_segment(vfs, &dir) {
            Some((path, e)) => format!(
                "the readable log starts at LSN {first} and {covered}: records {}..{} may be in {}, \
                 whose header does not read ({e}), so the state cannot be rebuilt",
                after + 1,
                first - 1,
                path.display()
            ),
            None => format!(
                "the log starts at LSN {first} and {covered}: records {}..{} are in no file (a \
                 checkpoint retires the log before it), so the state cannot be rebuilt",
                after + 1,
                first - 1
            ),
        });
        after = first - 1;
    }
    let scan = reader::scan(vfs, &dir, after, RecoveryMode::Tolerant, limits, &mut |_| Ok(true))?;
    for (code, v) in &scan.by_type {
        let e = rep.by_type.entry(RecordType::name(*code)).or_default();
        e.0 += v.0;
        e.1 += v.1;
    }
    rep.derived_deltas = scan.derived_deltas;
    rep.lsn_range = scan.segments.iter().filter_map(|s| s.lsns).fold(None, |acc, (a, b)| match acc {
        None => Some((a, b)),
        Some((x, y)) => Some((x.min(a), y.max(b))),
    });
    if let Some(t) = &scan.torn {
        rep.notes.push(format!(
            "torn tail: {} bytes at offset {} of {}",
            t.bytes,
            t.offset,
            t.file.display()
        ));
    }
    for d in &scan.dropped {
        rep.notes.push(format!(
            "unreadable: {} bytes at offset {} of {}: {}",
            d.bytes,
            d.offset,
            d.file.display(),
            d.reason
        ));
    }
    for n in names.iter().filter(|n| n.ends_with(crate::storage::files::SET_ASIDE_SUFFIX)) {
        rep.notes.push(format!(
            "set aside by a tolerant start (dropped whole, never read): {}",
            dir.join(n).display()
        ));
    }
    for s in &scan.segments {
        if s.header.is_none() && !scan.dropped.iter().any(|d| d.file == s.path) {
            rep.notes.push(format!(
                "abandoned: {} ({} bytes) has a header that does not read; a later generation starts \
                 where the log before it ends, so nothing in it is replayed",
                s.path.display(),
                s.bytes
            ));
        }
    }
    rep.segments = scan.segments;
    Ok(rep)
}

/// The first problem [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: Option<PathBuf>,
    /// Offset of the first bad byte.
    pub offset: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Checkpoint files checked.
    pub checkpoints: usize,
    /// Segments checked.
    pub segments: usize,
    /// Commits replayed and re-validated.
    pub commits: u64,
    /// LSN of the last valid commit.
    pub last_lsn: u64,
    /// The first problem, if any.
    pub problem: Option<Problem>,
}

impl VerifyReport {
    /// Whether everything checked out.
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = format!(
            "{} checkpoints, {} segments, {} commits up to LSN {}",
            self.checkpoints, self.segments, self.commits, self.last_lsn
        );
        match &self.problem {
            None => write!(f, "{counts}: OK"),
            Some(p) => {
                write!(f, "PROBLEM")?;
                if let Some(file) = &p.file {
                    write!(f, " in {}", file.display())?;
                }
                if let Some(o) = p.offset {
                    write!(f, " at offset {o}")?;
                }
                write!(f, ": {} (checked before it: {counts})", p.reason)
            }
        }
    }
}

fn problem(e: Error) -> Problem {
    match e {
        Error::Corrupt { file, offset, reason } => Problem { file, offset, reason },
        Error::Io { path, source } => Problem { file: path, offset: None, reason: source.to_string() },
        other => Problem { file: None, offset: None, reason: other.to_string() },
    }
}

/// Check every CRC and invariant of `state_dir`: every checkpoint, every
/// segment, every record, and that every logged change replays validly.
/// A torn tail counts as a problem (it is reported with its offset).
pub fn verify(state_dir: &Path) -> VerifyReport {
    verify_with(&StdVfs, state_dir, &Limits::default())
}

/// [`verify`] over any [`Vfs`].
pub fn verify_with(vfs: &dyn Vfs, state_dir: &Path, limits: &Limits) -> VerifyReport {
    let mut rep = VerifyReport::default();
    let dir = crate::storage::files::log_dir(state_dir);
    let list = match crate::storage::checkpoint::list(vfs, &dir) {
        Ok(l) => l,
        Err(e) => {
            rep.problem = Some(problem(e));
            return rep;
        }
    };
    rep.checkpoints = list.len();
    let mut image = None;
    for (lsn, path) in &list {
        match crate::storage::checkpoint::read(vfs, path, limits) {
            Ok(img) if img.lsn == *lsn => {
                if image.is_none() {
                    image = Some(img);
                }
            }
            Ok(_) => {
                rep.problem.get_or_insert(Problem {
                    file: Some(path.clone()),
                    offset: Some(24),
                    reason: "LSN differs from the file name".into(),
                });
            }
            Err(e) => {
                rep.problem.get_or_insert(problem(e));
            }
        }
    }
    let mut image = image.unwrap_or_default();
    let mut commits = 0u64;
    match reader::scan(vfs, &dir, image.lsn, RecoveryMode::Strict, limits, &mut |c| {
        image.apply_commit(c)?;
        commits += 1;
        Ok(true)
    }) {
        Ok(scan) => {
            rep.segments = scan.segments.len();
            rep.last_lsn = scan.last_lsn;
            if let Some(t) = scan.torn {
                rep.problem.get_or_insert(Problem {
                    file: Some(t.file),
                    offset: Some(t.offset),
                    reason: format!("torn tail of {} bytes", t.bytes),
                });
            }
        }
        Err(e) => {
            // Counted up to the problem: the segments before its file, and
            // the commits replayed.
            let at = match &e {
                Error::Corrupt { file: Some(f), .. } | Error::Io { path: Some(f), .. } => Some(f.clone()),
                _ => None,
            };
            rep.last_lsn = image.lsn;
            rep.segments = vfs.list(&dir).map_or(0, |names| {
                names
                    .iter()
                    .filter(|n| crate::storage::files::parse_segment_name(n).is_some())
                    .filter(|n| at.as_ref().is_some_and(|f| dir.join(n) < *f))
                    .count()
            });
            rep.problem.get_or_insert(problem(e));
        }
    }
    rep.commits = commits;
    if rep.problem.is_none() {
        if let Some(p) = find_cycle(&image) {
            rep.problem = Some(Problem {
                file: None,
                offset: None,
                reason: format!("the dependency graph the log builds has a cycle through page {p}"),
            });
        }
    }
    rep
}

/// A page on a cycle of the image's dependency graph, if it has one (Kahn's
/// algorithm; the engine refuses such edges, so only a damaged or forged
/// log holds one).
pub fn find_cycle(image: &crate::storage::image::StateImage) -> Option<crate::PageId> {
    use std::collections::BTreeMap;
    let mut indeg: BTreeMap<crate::PageId, usize> = BTreeMap::new();
    let mut out: BTreeMap<crate::PageId, Vec<crate::PageId>> = BTreeMap::new();
    for &(a, b) in image.graph.edges.keys() {
        indeg.entry(a).or_default();
        *indeg.entry(b).or_default() += 1;
        out.entry(a).or_default().push(b);
    }
    let mut ready: Vec<crate::PageId> = indeg.iter().filter(|(_, &d)| d == 0).map(|(p, _)| *p).collect();
    while let Some(p) = ready.pop() {
        for c in out.get(&p).into_iter().flatten() {
            if let Some(d) = indeg.get_mut(c) {
                *d -= 1;
                if *d == 0 {
                    ready.push(*c);
                }
            }
        }
        indeg.remove(&p);
    }
    indeg.into_iter().find(|(_, d)| *d > 0).map(|(p, _)| p)
}

/// What [`replay`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayReport {
    /// LSN of the last commit applied.
    pub lsn: Lsn,
    /// Logical time reached.
    pub timestamp: u64,
    /// Pages in the state.
    pub pages: usize,
    /// Total page bytes.
    pub bytes: u64,
    /// The state hash.
    pub hash: u128,
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LSN {} time {}: {} pages, {} bytes, state hash {:032x}",
            self.lsn, self.timestamp, self.pages, self.bytes, self.hash
        )
    }
}

/// Replay `state_dir` to the end of its log, or to LSN `to`, and hash the result.
///
/// # Errors
/// [`Error::Corrupt`] and friends, as recovery in strict mode.
pub fn replay(state_dir: &Path, to: Option<Lsn>) -> Result<ReplayReport> {
    replay_with(&StdVfs, state_dir, to, &Limits::default())
}

/// [`replay`] over any [`Vfs`].
///
/// # Errors
/// As [`replay`].
pub fn replay_with(
    vfs: &dyn Vfs,
    state_dir: &Path,
    to: Option<Lsn>,
    limits: &Limits,
) -> Result<ReplayReport> {
    let img = crate::history::replay::replay_to_lsn(vfs, state_dir, to, limits)?;
    Ok(ReplayReport {
        lsn: Lsn(img.lsn),
        timestamp: img.timestamp,
        pages: img.pages.len(),
        bytes: img.pages.values().map(|p| p.bytes.len() as u64).sum(),
        hash: img.state_hash(),
    })
}
