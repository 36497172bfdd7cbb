//! The storage layer: everything that is bytes on a disk. File names and
//! the virtual file system ([`vfs`]), the binary codecs ([`codec`]), the
//! write-ahead log's writer and reader ([`log`]), the state image the log
//! replays into ([`image`]), checkpoints ([`checkpoint`]) and whole-state
//! recovery above them ([`recovery`]). Nothing here knows about GPUs, the
//! dependency graph's live form, or the handle.

pub mod checkpoint;
pub mod codec;
pub mod files;
pub mod image;
pub mod log;
pub mod recovery;
pub mod vfs;
