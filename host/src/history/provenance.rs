//! The call graph of a value: which deltas, from which functions and
//! inputs, produced a page's bytes.
//!
//! Every derived delta is logged with its [`Provenance`](crate::Provenance):
//! the recompute function, its version and the epoch of each parent it read.
//! [`chain`] reads the history kept on disk (the oldest checkpoint and the
//! log after it), finds the delta that produced the page's latest version,
//! and walks back through the parents' versions to the user writes (or
//! page creations) they all came from. Nothing on disk changes.
//!
//! ```
//! use mmsb::{Config, Mmsb, Payload};
//! use mmsb::provenance::{self, Origin};
//! # fn main() -> mmsb::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let state = Mmsb::start(Config::at(dir.path()))?;
//! mmsb::mmsb! { state;
//!     page a(4);
//!     derived double(4) = dbl@1(a) |ins, out| {
//!         for (o, i) in out.iter_mut().zip(ins[0]) { *o = i.wrapping_mul(2); }
//!     };
//! }
//! state.update_page(a, Payload::Full(vec![1, 2, 3, 4]))?;
//! state.stop()?;
//! let chain = provenance::chain(dir.path(), double)?;
//! assert!(matches!(&chain.steps[0].origin, Origin::Derived { function, .. } if function == "dbl"));
//! assert!(matches!(chain.steps[1].origin, Origin::User));
//! println!("{chain}");
//! # Ok(())
//! # }
//! ```

use crate::delta::Source;
use crate::storage::codec::Limits;
use crate::storage::log::reader::Record;
use crate::storage::vfs::{StdVfs, Vfs};
use crate::{DeltaId, Epoch, Error, Lsn, PageId, Result};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// At most this many versions are listed in one chain; a longer chain is
/// cut and marked [`Chain::truncated`].
pub const MAX_STEPS: usize = 100_000;

/// How one version of a page came to be.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A user write through the API.
    User,
    /// A state restore or diff application.
    Replay,
    /// A recompute: `function` at `version` read these parent versions.
    Derived {
        /// Registered name of the function.
        function: String,
        /// Its version.
        version: u32,
        /// Each parent and the epoch it was read at, in call order.
        parents: Vec<(PageId, Epoch)>,
    },
    /// Epoch 0: the zero-filled page as created.
    Created,
    /// The delta that produced this version is older than the history
    /// still on disk (a checkpoint replaced it).
    BeforeHistory,
}

/// One version of one page in a [`Chain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The page.
    pub page: PageId,
    /// Its epoch (the version).
    pub epoch: Epoch,
    /// The delta that produced the version, when it is in the history.
    pub delta: Option<DeltaId>,
    /// LSN of that delta's log record.
    pub lsn: Option<Lsn>,
    /// Its logical timestamp.
    pub timestamp: Option<u64>,
    /// How the version came to be.
    pub origin: Origin,
    /// Indexes into [`Chain::steps`] of the parent versions (derived only),
    /// in call order.
    pub parents: Vec<usize>,
}

/// The provenance of a page's version: the versions it was computed from,
/// transitively. A version reached along several paths is listed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Every version involved, the asked-for one first, then in depth-first
    /// order of the parents.
    pub steps: Vec<Step>,
    /// Whether [`MAX_STEPS`] cut the walk short.
    pub truncated: bool,
}

impl Chain {
    /// The user writes (and creations, and versions older than the history)
    /// the value ultimately rests on.
    pub fn roots(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| !matches!(s.origin, Origin::Derived { .. }))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page {} epoch {}", self.page, self.epoch)?;
        if let (Some(l), Some(t), Some(d)) = (self.lsn, self.timestamp, self.delta) {
            write!(f, " (delta {} at LSN {}, time {t})", d.0, l.0)?;
        }
        match &self.origin {
            Origin::User => write!(f, ": user write"),
            Origin::Replay => write!(f, ": restore"),
            Origin::Derived { function, version, .. } => write!(f, ": {function} v{version} of"),
            Origin::Created => write!(f, ": created (zeros)"),
            Origin::BeforeHistory => write!(f, ": before the history on disk"),
        }
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            return writeln!(f, "no versions");
        }
        let mut shown = vec![false; self.steps.len()];
        // (step, depth); children pushed in reverse to print in call order.
        let mut stack = vec![(0usize, 0usize)];
        while let Some((i, depth)) = stack.pop() {
            let s = &self.steps[i];
            write!(f, "{:indent$}{s}", "", indent = 2 * depth)?;
            if shown[i] && !s.parents.is_empty() {
                writeln!(f, " (as above)")?;
                continue;
            }
            writeln!(f)?;
            shown[i] = true;
            for &p in s.parents.iter().rev() {
                stack.push((p, depth + 1));
            }
        }
        if self.truncated {
            writeln!(f, "(cut at {MAX_STEPS} versions)")?;
        }
        Ok(())
    }
}

/// Where a version's delta sits in the log.
struct Entry {
    delta: DeltaId,
    lsn: u64,
    timestamp: u64,
    source: Source,
}

/// The provenance of page `page`'s latest version in `state_dir` (a
/// deleted page: its last version).
///
/// # Errors
/// [`Error::PageNotFound`] when the history never mentions the page; as
/// [`crate::history::replay::replay_observed`] for an unreadable history.
pub fn chain(state_dir: &Path, page: PageId) -> Result<Chain> {
    chain_with(&StdVfs, state_dir, page, None, &Limits::default())
}

/// The provenance of version `epoch` of `page` (`None`: the latest), over
/// any [`Vfs`].
///
/// # Errors
/// As [`chain`].
pub fn chain_with(
    vfs: &dyn Vfs,
    state_dir: &Path,
    page: PageId,
    epoch: Option<Epoch>,
    limits: &Limits,
) -> Result<Chain> {
    let _span = tracing::debug_span!("mmsb.provenance", page = page.0).entered();
    let oldest = crate::history::replay::history_start(vfs, state_dir)?;
    let mut versions: HashMap<(PageId, Epoch), Entry> = HashMap::new();
    let mut latest: HashMap<PageId, Epoch> = HashMap::new();
    let mut failed: Option<Error> = None;
    let image = crate::history::replay::replay_observed(
        vfs,
        state_dir,
        Some(oldest),
        limits,
        &mut |img, commit| {
            // Epochs as the commit walks them, starting from the image before it.
            let mut at: HashMap<PageId, Epoch> = HashMap::new();
            for (lsn, r) in commit {
                match r {
                    Record::Create { id, .. } => {
                        at.insert(*id, Epoch(0));
                        latest.insert(*id, Epoch(0));
                    }
                    Record::Delta(v) => {
                        let e = at
                            .entry(v.page)
                            .or_insert_with(|| img.pages.get(&v.page).map_or(Epoch(0), |p| p.epoch));
                        *e = Epoch(e.0 + 1);
                        let source = match v.to_delta() {
                            Ok(d) => d.source,
                            Err(err) => {
                                failed.get_or_insert(err);
                                Source::User
                            }
                        };
                        latest.insert(v.page, *e);
                        versions.insert(
                            (v.page, *e),
                            Entry { delta: v.id, lsn: *lsn, timestamp: v.timestamp, source },
                        );
                    }
                    _ => {}
                }
            }
            false
        },
        &mut |_, _| {},
    )?;
    if let Some(e) = failed {
        return Err(e);
    }
    let start = match epoch {
        Some(e) => e,
        None => match image.pages.get(&page) {
            Some(p) => p.epoch,
            None => *latest.get(&page).ok_or(Error::PageNotFound(page))?,
        },
    };
    Ok(walk(&versions, page, start))
}

/// Depth-first walk from `(page, epoch)` through derived versions' parents.
fn walk(versions: &HashMap<(PageId, Epoch), Entry>, page: PageId, epoch: Epoch) -> Chain {
    let mut steps: Vec<Step> = Vec::new();
    let mut index: HashMap<(PageId, Epoch), usize> = HashMap::new();
    let mut truncated = false;
    let mut stack = vec![(page, epoch)];
    // Pass 1: discover versions (each once) and record their parents' keys.
    let mut parent_keys: Vec<Vec<(PageId, Epoch)>> = Vec::new();
    while let Some(key) = stack.pop() {
        if index.contains_key(&key) {
            continue;
        }
        if steps.len() >= MAX_STEPS {
            truncated = true;
            break;
        }
        let (origin, entry) = match versions.get(&key) {
            Some(e) => (
                match &e.source {
                    Source::User => Origin::User,
                    Source::Replay => Origin::Replay,
                    Source::Propagation(p) => Origin::Derived {
                        function: p.function.to_string(),
                        version: p.version,
                        parents: p.parents.clone(),
                    },
                },
                Some(e),
            ),
            None if key.1 == Epoch(0) => (Origin::Created, None),
            None => (Origin::BeforeHistory, None),
        };
        let parents = match &origin {
            Origin::Derived { parents, .. } => parents.clone(),
            _ => Vec::new(),
        };
        index.insert(key, steps.len());
        steps.push(Step {
            page: key.0,
            epoch: key.1,
            delta: entry.map(|e| e.delta),
            lsn: entry.map(|e| Lsn(e.lsn)),
            timestamp: entry.map(|e| e.timestamp),
            origin,
            parents: Vec::new(),
        });
        stack.extend(parents.iter().rev().copied());
        parent_keys.push(parents);
    }
    // Pass 2: resolve parent keys to step indexes (a cut walk drops the unknown).
    for (i, keys) in parent_keys.into_iter().enumerate() {
        steps[i].parents = keys.iter().filter_map(|k| index.get(k).copied()).collect();
    }
    Chain { steps, truncated }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Mmsb, Payload};

    fn add(ins: &[&[u8]], out: &mut [u8]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = ins.iter().fold(0u8, |a, p| a.wrapping_add(p[i]));
        }
    }

    #[test]
    fn a_diamond_walks_back_to_its_user_writes() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (d, a, b) = {
            let state = Mmsb::start(Config::at(dir.path()))?;
            state.register_function("add", 1, add)?;
            crate::mmsb! { state;
                page a(4);
                page b(4);
                derived left(4) = add(a, b);
                derived right(4) = add(b);
                derived d(4) = add(left, right);
            }
            state.update_page(a, Payload::Full(vec![1; 4]))?;
            state.update_page(b, Payload::Full(vec![2; 4]))?;
            state.stop()?;
            (d, a, b)
        };
        let c = chain(dir.path(), d)?;
        assert_eq!(c.steps[0].page, d);
        let Origin::Derived { function, version, parents } = &c.steps[0].origin else { panic!("{c}") };
        assert_eq!((function.as_str(), *version, parents.len()), ("add", 1, 2));
        // b's latest version is reached through both left and right, listed once.
        let b_steps: Vec<&Step> = c.steps.iter().filter(|s| s.page == b).collect();
        assert_eq!(b_steps.len(), 1);
        assert_eq!((b_steps[0].epoch.get(), &b_steps[0].origin), (1, &Origin::User));
        let roots: Vec<(PageId, Epoch)> = c.roots().map(|s| (s.page, s.epoch)).collect();
        assert!(roots.contains(&(a, Epoch(1))) && roots.contains(&(b, Epoch(1))), "{c}");
        assert!(!c.truncated);
        let text = c.to_string();
        assert!(text.contains("add v1 of") && text.contains("user write"), "{text}");
        assert!(text.starts_with(&format!("page {d} epoch 2")), "{text}");
        Ok(())
    }

    #[test]
    fn versions_before_a_checkpoint_and_at_creation_are_named() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (x, y, z) = {
            let state = Mmsb::start(Config::at(dir.path()))?;
            state.register_function("add", 1, add)?;
            crate::mmsb! { state;
                page x(2);
                page y(2);
                derived z(2) = add(x, y);
            }
            state.update_page(x, Payload::Full(vec![5, 6]))?;
            state.checkpoint()?;
            state.update_page(y, Payload::Full(vec![1, 1]))?;
            state.stop()?;
            (x, y, z)
        };
        let c = chain_with(&StdVfs, dir.path(), z, None, &Limits::default())?;
        assert!(matches!(c.steps[0].origin, Origin::Derived { .. }), "{c}");
        let origin = |p: PageId| c.steps.iter().find(|s| s.page == p).map(|s| s.origin.clone());
        assert_eq!(origin(x), Some(Origin::BeforeHistory));
        assert_eq!(origin(y), Some(Origin::User));
        // The derived page's first version (declared on zero parents) is not in the history kept.
        let first = chain_with(&StdVfs, dir.path(), x, Some(Epoch(0)), &Limits::default())?;
        assert_eq!(first.steps[0].origin, Origin::Created);
        assert!(matches!(chain(dir.path(), PageId(77)), Err(Error::PageNotFound(_))));
        Ok(())
    }
}
