//! Pages: fixed-length byte arrays with an id, an epoch, a location and a
//! small metadata map.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Where a page's bytes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Location {
    /// Host memory.
    Cpu,
    /// Memory of the GPU with this ordinal.
    Gpu(u32),
    /// CUDA managed (unified) memory, reachable from host and device.
    Unified,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Cpu => write!(f, "cpu"),
            Location::Gpu(n) => write!(f, "gpu:{n}"),
            Location::Unified => write!(f, "unified"),
        }
    }
}

impl std::str::FromStr for Location {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Location::Cpu),
            "unified" => Ok(Location::Unified),
            "gpu" => Ok(Location::Gpu(0)),
            _ => {
                s.strip_prefix("gpu:").and_then(|n| n.parse().ok()).map(Location::Gpu).ok_or_else(|| {
                    Error::Config(format!("unknown location {s:?} (cpu, gpu, gpu:N, unified)"))
                })
            }
        }
    }
}

/// Most metadata entries a page may carry.
pub const MAX_META_ENTRIES: usize = 64;
/// Longest metadata key, in bytes.
pub const MAX_META_KEY: usize = 255;
/// Longest metadata value, in bytes.
pub const MAX_META_VALUE: usize = 4096;

/// A page's metadata: a small ordered map of string keys to byte values.
pub type Metadata = BTreeMap<String, Vec<u8>>;

/// Check the metadata limits.
///
/// # Errors
/// [`Error::InvalidPage`] when a limit is exceeded.
pub fn check_metadata(meta: &Metadata) -> Result<()> {
    if meta.len() > MAX_META_ENTRIES {
        return Err(Error::InvalidPage {
            reason: format!("{} metadata entries (at most {MAX_META_ENTRIES})", meta.len()),
        });
    }
    for (k, v) in meta {
        if k.len() > MAX_META_KEY || v.len() > MAX_META_VALUE {
            return Err(Error::InvalidPage {
                reason: format!(
                    "metadata entry {k:.32?} too large (key {} of {MAX_META_KEY}, value {} of {MAX_META_VALUE} bytes)",
                    k.len(),
                    v.len()
                ),
            });
        }
    }
    Ok(())
}

/// What to create: length, location and metadata of a new page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageSpec {
    /// Length in bytes, fixed for the page's life (at least 1).
    pub len: u64,
    /// Where the bytes live.
    pub location: Location,
    /// Initial metadata.
    pub meta: Metadata,
}

impl PageSpec {
    /// A CPU page of `len` bytes, zero-filled.
    pub fn new(len: u64) -> Self {
        Self { len, location: Location::Cpu, meta: Metadata::new() }
    }

    /// Place the page at `location`.
    #[must_use]
    pub fn on(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// Set metadata entry `key` to `value`.
    #[must_use]
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// Set the `name` metadata entry.
    #[must_use]
    pub fn named(self, name: &str) -> Self {
        self.meta("name", name.as_bytes())
    }

    /// Check length and metadata.
    ///
    /// # Errors
    /// [`Error::InvalidPage`] for a zero length, a length beyond the address
    /// space or oversized metadata.
    pub fn validate(&self) -> Result<()> {
        if self.len == 0 {
            return Err(Error::InvalidPage { reason: "page length must be at least 1 byte".into() });
        }
        if usize::try_from(self.len).is_err() || self.len > isize::MAX as u64 / 2 {
            return Err(Error::InvalidPage { reason: format!("page length {} is too large", self.len) });
        }
        check_metadata(&self.meta)
    }
}
