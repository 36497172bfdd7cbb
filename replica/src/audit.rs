//! `mmsb inspect` and `mmsb verify` of a replicated state: its stream and
//! object store read as a state directory's log and checkpoints are.
//!
//! [`inspect`] lists what the cluster holds; [`verify`] reads every
//! checkpoint object whole (its digest, every CRC of the file), replays the
//! stream from the oldest checkpoint kept (every frame's CRC, every record
//! validated as recovery validates it), checks the single-writer history
//! (LSNs contiguous, each commit under the epoch of the fence before it,
//! fences' epochs rising) and that the replay's state hash equals each
//! later checkpoint's at its LSN.

use crate::archive::{self, parse_commit_object, StoredCheckpoint, COMMIT_PREFIX};
use crate::follower::{Body, Replicated};
use crate::link::Link;
use crate::{Error, Options, Result};
use mmsb::internals::codec::Limits;
use mmsb::internals::image::StateImage;
use mmsb::internals::log::reader::visit_framed;
use mmsb::Lsn;
use std::fmt;

/// What the cluster holds of a replicated state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamReport {
    /// The stream's name.
    pub stream: String,
    /// Its first and last sequence (0, 0 when empty).
    pub seqs: (u64, u64),
    /// Messages held.
    pub messages: u64,
    /// Commit messages among them, and how many of those point to objects.
    pub commits: (u64, u64),
    /// Fences among them, with the epochs they open.
    pub fences: Vec<u64>,
    /// The first and last LSN the held commits carry (0, 0 when none).
    pub lsns: (u64, u64),
    /// Bytes of the held messages' payloads.
    pub payload_bytes: u64,
    /// The object store's name.
    pub objects: String,
    /// Its checkpoints, oldest first.
    pub checkpoints: Vec<StoredCheckpoint>,
    /// Its large-commit objects: (name, bytes).
    pub commit_objects: Vec<(String, u64)>,
}

impl fmt::Display for StreamReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (c, o) = self.commits;
        writeln!(
            f,
            "stream {}: messages {}..={} ({} held), {c} commits ({o} through the object store), {} fences",
            self.stream,
            self.seqs.0,
            self.seqs.1,
            self.messages,
            self.fences.len()
        )?;
        writeln!(f, "  lsns {}..={}, payload bytes {}", self.lsns.0, self.lsns.1, self.payload_bytes)?;
        if !self.fences.is_empty() {
            let e: Vec<String> = self.fences.iter().map(u64::to_string).collect();
            writeln!(f, "  fences of epochs {}", e.join(", "))?;
        }
        writeln!(
            f,
            "object store {}: {} checkpoints, {} large commits",
            self.objects,
            self.checkpoints.len(),
            self.commit_objects.len()
        )?;
        for c in &self.checkpoints {
            writeln!(
                f,
                "  checkpoint at lsn {} (stream seq {}): {} bytes, state hash {:032x}",
                c.lsn.0, c.seq, c.bytes, c.state_hash
            )?;
        }
        for (name, bytes) in &self.commit_objects {
            writeln!(f, "  {name}: {bytes} bytes")?;
        }
        Ok(())
    }
}

/// Read every message of the stream in `seqs` and what the object store
/// lists.
///
/// # Errors
/// [`Error::Config`] when the cluster holds no such state;
/// [`Error::BadMessage`] for a message that does not read; the cluster's
/// errors.
pub fn inspect(opts: &Options) -> Result<StreamReport> {
    let link = Link::open(opts)?;
    let seqs = link.bounds()?;
    let mut r = StreamReport {
        stream: link.names().stream.clone(),
        seqs,
        messages: 0,
        commits: (0, 0),
        fences: Vec::new(),
        lsns: (0, 0),
        payload_bytes: 0,
        objects: link.names().objects.clone(),
        checkpoints: archive::checkpoints(&link)?,
        commit_objects: Vec::new(),
    };
    for i in link.list_objects()? {
        if i.name.starts_with(COMMIT_PREFIX) {
            r.commit_objects.push((i.name.clone(), i.size as u64));
        }
    }
    r.commit_objects.sort_by_key(|(n, _)| parse_commit_object(n).map(|(e, f)| (f, e)));
    for seq in seqs.0.max(1)..=seqs.1 {
        let Some(m) = link.get(seq)? else { continue };
        r.messages += 1;
        r.payload_bytes += m.payload.len() as u64;
        let m = Replicated::from_message(&m)?;
        match &m.body {
            Body::Fence { .. } => r.fences.push(m.epoch),
            Body::Commit { first, last, .. } | Body::Stored { first, last, .. } => {
                r.commits.0 += 1;
                if matches!(m.body, Body::Stored { .. }) {
                    r.commits.1 += 1;
                }
                if r.lsns.0 == 0 {
                    r.lsns.0 = *first;
                }
                r.lsns.1 = *last;
            }
        }
    }
    Ok(r)
}

/// What [`verify`] checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Checkpoint objects read whole and decoded.
    pub checkpoints: usize,
    /// Of those, the ones whose LSN the replay passed and whose state hash
    /// it matched (the oldest, where it starts, counts).
    pub matched: usize,
    /// Stream messages replayed.
    pub messages: u64,
    /// Records replayed (LSNs).
    pub records: u64,
    /// Where the replay started (a checkpoint's LSN, or 0).
    pub from: Lsn,
    /// The LSN it reached.
    pub lsn: Lsn,
    /// The state hash there.
    pub state_hash: u128,
    /// The first problem found, if any.
    pub problem: Option<String>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.problem {
            return write!(f, "DAMAGED: {p}");
        }
        write!(
            f,
            "OK: {} checkpoints decode, {} of them equal the replay at their LSN; {} messages, {} records \
             replayed from lsn {} to lsn {}; state hash {:032x}",
            self.checkpoints,
            self.matched,
            self.messages,
            self.records,
            self.from.0,
            self.lsn.0,
            self.state_hash
        )
    }
}

/// Check a replicated state end to end (see the module's docs). A fault
/// in the data is the report's `problem`; an error is a failure to reach
/// or read the cluster.
///
/// # Errors
/// [`Error::Config`] when the cluster holds no such state; the cluster's
/// errors ([`Error::Connect`], [`Error::JetStream`], [`Error::Timeout`]).
pub fn verify(opts: &Options) -> Result<VerifyReport> {
    let link = Link::open(opts)?;
    let limits = Limits::default();
    let mut rep = VerifyReport {
        checkpoints: 0,
        matched: 0,
        messages: 0,
        records: 0,
        from: Lsn(0),
        lsn: Lsn(0),
        state_hash: 0,
        problem: None,
    };
    let stored = match archive::checkpoints(&link) {
        Ok(s) => s,
        Err(e @ Error::BadObject { .. }) => {
            rep.problem = Some(e.to_string());
            return Ok(rep);
        }
        Err(e) => return Err(e),
    };
    // Every checkpoint decodes and is what its metadata say; the oldest
    // is where the replay starts (only its state is kept).
    let mut start = None;
    for c in &stored {
        match archive::fetch_checkpoint(&link, c, &limits) {
            Ok((_, img)) => {
                start.get_or_insert(img);
            }
            Err(Error::BadObject { name, reason }) => {
                rep.problem = Some(format!("checkpoint {name}: {reason}"));
                return Ok(rep);
            }
            Err(e) => return Err(e),
        }
        rep.checkpoints += 1;
    }
    let (mut image, mut seq) = match (stored.first(), start) {
        (Some(c), Some(img)) => (img, c.seq),
        _ => (StateImage::default(), 0),
    };
    rep.from = Lsn(image.lsn);
    if !stored.is_empty() {
        rep.matched = 1;
    }
    let (first, last) = link.bounds()?;
    if last > seq && first > seq + 1 {
        rep.problem = Some(format!(
            "the stream starts at message {first}; replay from lsn {} needs message {} on",
            image.lsn,
            seq + 1
        ));
        return Ok(rep);
    }
    let mut epoch = 0u64;
    let mut next_ckpt = 1;
    while seq < last {
        seq += 1;
        let Some(raw) = link.get(seq)? else {
            rep.problem = Some(format!("message {seq} is missing from the stream (it ends at {last})"));
            return Ok(rep);
        };
        rep.messages += 1;
        let m = match Replicated::from_message(&raw) {
            Ok(m) => m,
            Err(e) => {
                rep.problem = Some(e.to_string());
                return Ok(rep);
            }
        };
        if let Err(p) = replay_one(&link, &m, &mut image, &mut epoch, &limits) {
            rep.problem = Some(p);
            return Ok(rep);
        }
        if let Body::Commit { first, last, .. } | Body::Stored { first, last, .. } = &m.body {
            rep.records += last - first + 1;
        }
        while let Some(c) = stored.get(next_ckpt) {
            if c.seq > seq {
                break;
            }
            if c.seq == seq {
                if image.lsn != c.lsn.0 || image.state_hash() != c.state_hash {
                    rep.problem = Some(format!(
                        "checkpoint {} says lsn {} and state hash {:032x} after message {seq}; the replay \
                         gives lsn {} and {:032x}",
                        c.name,
                        c.lsn.0,
                        c.state_hash,
                        image.lsn,
                        image.state_hash()
                    ));
                    return Ok(rep);
                }
                rep.matched += 1;
            }
            next_ckpt += 1;
        }
    }
    rep.lsn = Lsn(image.lsn);
    rep.state_hash = image.state_hash();
    Ok(rep)
}

/// Apply message `m` to `image`, checking the history; the problem as text.
fn replay_one(
    link: &Link,
    m: &Replicated,
    image: &mut StateImage,
    epoch: &mut u64,
    limits: &Limits,
) -> std::result::Result<(), String> {
    let at = |what: String| format!("message {} (epoch {}): {what}", m.seq, m.epoch);
    let (first, last, framed) = match &m.body {
        Body::Fence { after } => {
            if m.epoch <= *epoch {
                return Err(at(format!("a fence after one of epoch {epoch}")));
            }
            if *after != image.lsn {
                return Err(at(format!("a fence after lsn {after}; the stream is at lsn {}", image.lsn)));
            }
            *epoch = m.epoch;
            return Ok(());
        }
        Body::Commit { first, last, framed } => (*first, *last, framed.to_vec()),
        Body::Stored { first, last, object } => {
            let framed = link
                .get_object(object)
                .map_err(|e| at(e.to_string()))?
                .ok_or_else(|| at(format!("its records' object {object} is gone")))?;
            (*first, *last, framed)
        }
    };
    // A stream trimmed behind a checkpoint starts after its fence.
    if *epoch == 0 {
        *epoch = m.epoch;
    }
    if m.epoch != *epoch {
        return Err(at(format!("a commit after the fence of epoch {epoch}")));
    }
    if first != image.lsn + 1 {
        return Err(at(format!("records {first}-{last}; the stream is at lsn {}", image.lsn)));
    }
    let end = visit_framed(&framed, first, limits, &mut |c| image.apply_commit(c).map(|()| true))
        .map_err(|e| at(e.to_string()))?;
    if end != last {
        return Err(at(format!("its records end at lsn {end}; its header says {last}")));
    }
    // Optional records at the end of a message (a checkpoint's) are part
    // of the LSN sequence even though no commit ends there.
    image.lsn = last;
    Ok(())
}
