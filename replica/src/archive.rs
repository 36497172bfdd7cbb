//! The state's object store: full checkpoints (a follower bootstraps from
//! the newest) and commits too large for a stream message.
//!
//! | object | name | metadata |
//! |---|---|---|
//! | a full checkpoint at LSN `L`, the stream read to sequence `S` | `ckpt-<L, 20 digits>` | `mmsb-lsn` = L, `mmsb-seq` = S, `mmsb-hash` = the state hash at L (32 hex digits) |
//! | the framed records of a commit over the message limit | `commit-<epoch>-<first LSN, 20 digits>` | `mmsb-lsn` = `first-last` |
//!
//! A checkpoint object holds a checkpoint file of the library's format
//! (docs/FORMAT.md), byte for byte; the object store adds its SHA-256
//! digest, and the file its CRCs. The stream is trimmed only behind a
//! checkpoint that is stored: every message after the oldest checkpoint
//! kept stays, so a follower at any kept checkpoint, or later, can go on.

use crate::link::Link;
use crate::{Error, Result};
use async_nats::jetstream::object_store::ObjectInfo;
use mmsb::internals::checkpoint;
use mmsb::internals::codec::Limits;
use mmsb::internals::image::StateImage;
use mmsb::Lsn;

/// Prefix of checkpoint objects.
pub const CKPT_PREFIX: &str = "ckpt-";
/// Prefix of large-commit objects.
pub const COMMIT_PREFIX: &str = "commit-";
/// Metadata key: a checkpoint's LSN, or a large commit's `first-last`.
pub const META_LSN: &str = "mmsb-lsn";
/// Metadata key: the last stream sequence a checkpoint reflects.
pub const META_SEQ: &str = "mmsb-seq";
/// Metadata key: the state hash at a checkpoint's LSN.
pub const META_HASH: &str = "mmsb-hash";

/// A checkpoint in the object store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The object's name.
    pub name: String,
    /// Every record up to this LSN is in it.
    pub lsn: Lsn,
    /// The stream sequence of the last message it reflects: a follower
    /// that starts from it reads the stream from the next one.
    pub seq: u64,
    /// The state hash at [`StoredCheckpoint::lsn`].
    pub state_hash: u128,
    /// The object's size.
    pub bytes: u64,
}

/// The name of the checkpoint object at `lsn`.
pub fn checkpoint_object(lsn: Lsn) -> String {
    format!("{CKPT_PREFIX}{:020}", lsn.0)
}

/// The name of the object holding the records of a large commit of leader
/// `epoch` starting at LSN `first`.
pub fn commit_object(epoch: u64, first: u64) -> String {
    format!("{COMMIT_PREFIX}{epoch}-{first:020}")
}

/// The epoch and first LSN a large-commit object's name gives.
pub fn parse_commit_object(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(COMMIT_PREFIX)?;
    let (e, f) = rest.split_once('-')?;
    Some((e.parse().ok()?, f.parse().ok()?))
}

fn bad(name: &str, reason: String) -> Error {
    Error::BadObject { name: name.to_string(), reason }
}

impl StoredCheckpoint {
    /// Read a checkpoint object's info.
    ///
    /// # Errors
    /// [`Error::BadObject`] when its name or metadata do not read.
    pub fn from_info(i: &ObjectInfo) -> Result<StoredCheckpoint> {
        let name = &i.name;
        let field = |k: &str| i.metadata.get(k).ok_or_else(|| bad(name, format!("no {k} metadata")));
        let lsn: u64 =
            field(META_LSN)?.parse().map_err(|_| bad(name, format!("{META_LSN} is not a number")))?;
        let seq: u64 =
            field(META_SEQ)?.parse().map_err(|_| bad(name, format!("{META_SEQ} is not a number")))?;
        let state_hash = u128::from_str_radix(field(META_HASH)?, 16)
            .map_err(|_| bad(name, format!("{META_HASH} is not 32 hex digits")))?;
        if *name != checkpoint_object(Lsn(lsn)) {
            return Err(bad(name, format!("the name does not match its LSN {lsn}")));
        }
        Ok(StoredCheckpoint { name: name.clone(), lsn: Lsn(lsn), seq, state_hash, bytes: i.size as u64 })
    }
}

/// The checkpoints of the object store, oldest first.
///
/// # Errors
/// [`Error::BadObject`] for a checkpoint object whose metadata do not read;
/// [`Error::JetStream`], [`Error::Timeout`].
pub fn checkpoints(link: &Link) -> Result<Vec<StoredCheckpoint>> {
    let mut v = link
        .list_objects()?
        .iter()
        .filter(|i| i.name.starts_with(CKPT_PREFIX))
        .map(StoredCheckpoint::from_info)
        .collect::<Result<Vec<_>>>()?;
    v.sort_by_key(|c| c.lsn);
    Ok(v)
}

/// Read checkpoint `c` whole and verify it: the object's digest (the
/// client checks it), every CRC of the file, and its LSN and state hash
/// against the metadata. Returns the file's bytes and the state.
///
/// # Errors
/// [`Error::BadObject`] when it is gone or is not what its metadata say;
/// the object store's errors.
pub fn fetch_checkpoint(link: &Link, c: &StoredCheckpoint, limits: &Limits) -> Result<(Vec<u8>, StateImage)> {
    let bytes = link.get_object(&c.name)?.ok_or_else(|| bad(&c.name, "it is gone".into()))?;
    let img = checkpoint::decode(&bytes, limits).map_err(|e| bad(&c.name, e.to_string()))?;
    if img.lsn != c.lsn.0 || img.state_hash() != c.state_hash {
        return Err(bad(
            &c.name,
            format!(
                "it holds lsn {} with state hash {:032x}; its metadata say lsn {} and {:032x}",
                img.lsn,
                img.state_hash(),
                c.lsn.0,
                c.state_hash
            ),
        ));
    }
    Ok((bytes, img))
}

/// Store the checkpoint file `bytes` (a full checkpoint at `lsn`, the
/// stream read to `seq`, state hash `hash`).
///
/// # Errors
/// As [`Link::put_object`].
pub fn put_checkpoint(link: &Link, lsn: Lsn, seq: u64, hash: u128, bytes: &[u8]) -> Result<StoredCheckpoint> {
    let name = checkpoint_object(lsn);
    link.put_object(&name, &checkpoint_meta(lsn, seq, hash), bytes)?;
    Ok(StoredCheckpoint { name, lsn, seq, state_hash: hash, bytes: bytes.len() as u64 })
}

/// [`put_checkpoint`] of the checkpoint file at `path`, sent as it is read
/// (never whole in memory).
///
/// # Errors
/// As [`Link::put_object_file`].
pub fn put_checkpoint_file(
    link: &Link,
    lsn: Lsn,
    seq: u64,
    hash: u128,
    path: &std::path::Path,
) -> Result<StoredCheckpoint> {
    let name = checkpoint_object(lsn);
    let bytes = link.put_object_file(&name, &checkpoint_meta(lsn, seq, hash), path)?;
    Ok(StoredCheckpoint { name, lsn, seq, state_hash: hash, bytes })
}

fn checkpoint_meta(lsn: Lsn, seq: u64, hash: u128) -> [(&'static str, String); 3] {
    [(META_LSN, lsn.0.to_string()), (META_SEQ, seq.to_string()), (META_HASH, format!("{hash:032x}"))]
}

/// What [`trim`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Checkpoint objects removed (the oldest beyond those kept).
    pub checkpoints: usize,
    /// Large-commit objects removed (their records are in a kept checkpoint).
    pub commits: usize,
    /// Stream messages removed.
    pub messages: u64,
}

/// Keep the newest `keep` checkpoints (at least one) of the object store,
/// remove the older ones, and trim the stream and the large-commit objects
/// behind the oldest one kept.
///
/// # Errors
/// [`Error::Config`] for `keep == 0`; as the object store's and stream's
/// requests.
pub fn trim(link: &Link, keep: usize) -> Result<Trimmed> {
    if keep == 0 {
        return Err(Error::Config("at least one checkpoint must be kept".into()));
    }
    let all = checkpoints(link)?;
    let mut t = Trimmed::default();
    let split = all.len().saturating_sub(keep);
    let Some(oldest_kept) = all.get(split) else { return Ok(t) };
    // The stream first: a follower at a removed checkpoint or later can
    // still start from a kept one.
    t.messages = link.purge_below(oldest_kept.seq + 1)?;
    for c in &all[..split] {
        link.delete_object(&c.name)?;
        t.checkpoints += 1;
    }
    for i in link.list_objects()? {
        if let Some((_, first)) = parse_commit_object(&i.name) {
            if first <= oldest_kept.lsn.0 {
                link.delete_object(&i.name)?;
                t.commits += 1;
            }
        }
    }
    Ok(t)
}
