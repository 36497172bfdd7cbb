//! `mmsb inspect`, `mmsb verify`, `mmsb replay`: offline commands over a
//! state directory. They read it through [`Confined`] (no write, no link
//! followed out of the directory) and never panic on any input.

use crate::confined::Confined;
use crate::progress;
use mmsb::history::replay::{StateImage, Until};
use mmsb::internals::log::reader::Record;
use mmsb::Limits;
use mmsb::{Error, Lsn, PageId, Result, Source};

use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The state directory (or, with --nats and --state, a replicated
    /// state's stream and object store).
    #[arg(required_unless_present = "state")]
    dir: Option<PathBuf>,
    #[command(flatten)]
    replicated: crate::replica::Replicated,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The state directory (or, with --nats and --state, a replicated
    /// state's stream and object store).
    #[arg(required_unless_present = "state")]
    dir: Option<PathBuf>,
    #[command(flatten)]
    replicated: crate::replica::Replicated,
    /// Also check derived pages offline. Recompute functions are code in
    /// the program that registered them, so this command cannot run them;
    /// it replays the whole history and checks that every derived delta
    /// (source: propagation) targets a page declared derived at that point,
    /// names the declared function, reads exactly the declared parents, in
    /// order, at epochs they had reached, and that the final dependency
    /// graph is acyclic. To re-run the functions themselves, call
    /// `Mmsb::verify_recompute` in the program that registers them.
    #[arg(long)]
    recompute: bool,
}

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The state directory.
    dir: PathBuf,
    /// Stop after the last commit at or before this LSN.
    #[arg(long, conflicts_with = "to_time")]
    to: Option<u64>,
    /// Stop at the last commit boundary at which at most this many changes
    /// (logical time) had been accepted.
    #[arg(long = "to-time", value_name = "T")]
    to_time: Option<u64>,
}

/// Open `dir` for reading and check that it looks like a state directory.
pub(crate) fn open(dir: &Path) -> Result<Confined> {
    let v = Confined::new(dir).map_err(|e| Error::from(e).in_file(dir))?;
    let log = mmsb::internals::files::log_dir(dir);
    match std::fs::symlink_metadata(&log) {
        Ok(m) if m.is_dir() => Ok(v),
        Ok(m) if m.file_type().is_symlink() => Err(Error::Config(format!(
            "{} is a symbolic link; the offline commands do not follow links out of {}",
            log.display(),
            dir.display()
        ))),
        _ => {
            // The log directory itself, given for its parent?
            let hint = match dir.parent() {
                Some(p)
                    if dir.file_name().is_some_and(|n| n == "log")
                        && mmsb::internals::files::log_dir(p) == dir =>
                {
                    format!("; {} is the state directory's log: give {}", dir.display(), p.display())
                }
                _ => String::new(),
            };
            Err(Error::NotAState {
                dir: dir.to_path_buf(),
                reason: format!("no log/ directory inside{hint}"),
            })
        }
    }
}

pub fn inspect(args: &InspectArgs) -> Result<()> {
    let Some(dir) = &args.dir else {
        return args.replicated.inspect();
    };
    let v = open(dir)?;
    let spin = progress::spinner("reading log and checkpoints");
    let rep = mmsb::history::tools::inspect_with(&v, v.root(), &Limits::default());
    spin.finish_and_clear();
    let rep = rep?;
    outln!("state directory: {}", dir.display());
    out!("{rep}");
    let total: u64 = rep.segments.iter().map(|s| s.bytes).sum::<u64>()
        + rep.checkpoints.iter().map(|c| c.bytes).sum::<u64>();
    outln!("total bytes: {total}");
    Ok(())
}

/// Exit status of `verify`: 0 sound, 1 a problem found.
pub fn verify(args: &VerifyArgs) -> Result<bool> {
    let Some(dir) = &args.dir else {
        if args.recompute {
            return Err(Error::Config(
                "--recompute reads a state directory; a replicated state is verified without it".into(),
            ));
        }
        return args.replicated.verify();
    };
    let v = open(dir)?;
    let spin = progress::spinner("checking every CRC and replaying every commit");
    let rep = mmsb::history::tools::verify_with(&v, v.root(), &Limits::default());
    spin.finish_and_clear();
    if rep.problem.is_some() {
        // The first problem, once, where errors go.
        eprintln!("mmsb verify: {rep}");
        return Ok(false);
    }
    // With --recompute, nothing says OK on stdout before the derived pages
    // are checked too.
    let derived = if args.recompute {
        match check_provenance(&v) {
            Ok(n) => Some(n),
            Err(e) => {
                eprintln!("mmsb verify --recompute: {e} (the log and checkpoints themselves: {rep})");
                return Ok(false);
            }
        }
    } else {
        None
    };
    outln!("{rep}");
    if let Some(n) = derived {
        outln!(
            "derived pages: {} declared, their pages exist; {} derived deltas in the log \
             consistent with their declarations; graph acyclic (recompute functions not run: \
             they are code in the program that registered them; Mmsb::verify_recompute runs them)",
            n.derived,
            n.deltas
        );
    }
    Ok(true)
}

struct ProvenanceCheck {
    deltas: u64,
    derived: usize,
}

/// Replay the whole history and check every derived delta against the
/// declarations in force when it was committed.
fn check_provenance(v: &Confined) -> Result<ProvenanceCheck> {
    let limits = Limits::default();
    let mut deltas = 0u64;
    let problem: std::cell::RefCell<Option<Error>> = std::cell::RefCell::new(None);
    let bar = progress::spinner("checking derived deltas");
    let seg_dir = mmsb::internals::files::log_dir(v.root());
    let img = mmsb::history::replay::replay_observed(
        v,
        v.root(),
        None,
        &limits,
        &mut |_, _| problem.borrow().is_some(),
        &mut |img, commit| {
            bar.set_position(img.lsn);
            for (lsn, r) in commit {
                let Record::Delta(d) = r else { continue };
                if d.source != 1 || problem.borrow().is_some() {
                    continue;
                }
                deltas += 1;
                if let Err(e) = check_one(img, *lsn, d) {
                    *problem.borrow_mut() = Some(Error::Corrupt {
                        file: Some(seg_dir.clone()),
                        offset: None,
                        reason: format!("LSN {lsn}: {e}"),
                    });
                }
            }
        },
    );
    bar.finish_and_clear();
    let img = img?;
    if let Some(e) = problem.into_inner() {
        return Err(e);
    }
    for (page, d) in &img.graph.derived {
        for p in std::iter::once(page).chain(&d.parents) {
            if !img.pages.contains_key(p) {
                return Err(Error::Invariant(format!(
                    "derived page {page} ({:?}) names page {p}, which does not exist",
                    d.function
                )));
            }
        }
    }
    if let Some(cycle) = mmsb::history::tools::find_cycle(&img) {
        return Err(Error::Invariant(format!("the dependency graph has a cycle through page {cycle}")));
    }
    Ok(ProvenanceCheck { deltas, derived: img.graph.derived.len() })
}

fn check_one(img: &StateImage, _lsn: u64, d: &mmsb::internals::codec::delta::DeltaView<'_>) -> Result<()> {
    let delta = d.to_delta()?;
    let Source::Propagation(prov) = delta.source else {
        return Err(Error::Invariant("derived delta without provenance".into()));
    };
    let Some(decl) = img.graph.derived.get(&delta.page) else {
        return Err(Error::Invariant(format!(
            "derived delta for page {}, which is not declared derived",
            delta.page
        )));
    };
    if *decl.function != *prov.function {
        return Err(Error::Invariant(format!(
            "page {} is derived by {:?} but its delta names {:?}",
            delta.page, decl.function, prov.function
        )));
    }
    let read: Vec<PageId> = prov.parents.iter().map(|(p, _)| *p).collect();
    if read != decl.parents {
        return Err(Error::Invariant(format!(
            "page {} declares parents {:?} but its delta read {:?}",
            delta.page, decl.parents, read
        )));
    }
    for (p, epoch) in &prov.parents {
        match img.pages.get(p) {
            None => {
                return Err(Error::Invariant(format!(
                    "page {} read parent {p}, which does not exist",
                    delta.page
                )))
            }
            Some(pi) if pi.epoch < *epoch => {
                return Err(Error::Invariant(format!(
                    "page {} read parent {p} at epoch {epoch}, which it had not reached ({})",
                    delta.page, pi.epoch
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

pub fn replay(args: &ReplayArgs) -> Result<()> {
    let v = open(&args.dir)?;
    let limits = Limits::default();
    let bar = progress::spinner("replaying");
    let until = match (args.to_time, args.to) {
        (Some(t), _) => Until::Time(t),
        (None, Some(l)) => Until::Lsn(Lsn(l)),
        (None, None) => Until::End,
    };
    let replayed = mmsb::history::replay::replay_to(&v, v.root(), until, &limits);
    bar.finish_and_clear();
    let replayed = replayed?;
    let img = &replayed.image;
    end_notes(until, img.lsn, img.timestamp, replayed.torn.as_ref());
    let bytes: u64 = img.pages.values().map(|p| p.bytes.len() as u64).sum();
    outln!("replayed {} to LSN {} (logical time {})", args.dir.display(), Lsn(img.lsn), img.timestamp);
    outln!("pages: {} ({bytes} bytes)", img.pages.len());
    outln!("state hash: {:032x}", img.state_hash());
    Ok(())
}

/// The notes on stderr of a replay to `until` that reached LSN `lsn` and
/// logical time `timestamp`: the log ending before the point asked for,
/// and a torn tail at its end (`mmsb replay` and `mmsb export` alike).
pub fn end_notes(until: Until, lsn: u64, timestamp: u64, torn: Option<&mmsb::TornTail>) {
    match until {
        Until::Lsn(Lsn(to)) if lsn < to => {
            eprintln!("note: the log ends at LSN {lsn} (before the requested LSN {to})");
        }
        Until::Time(t) if timestamp < t => {
            eprintln!("note: the log ends at logical time {timestamp} (before the requested time {t})");
        }
        _ => {}
    }
    if let Some(t) = torn {
        eprintln!(
            "note: the log ends in a torn tail: {} bytes at offset {} of {} (a write that never \
             completed; left out, as recovery leaves it out)",
            t.bytes,
            t.offset,
            t.file.display()
        );
    }
}
