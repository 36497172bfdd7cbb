//! A read-only [`Vfs`] over bytes held in memory: the files of one state
//! directory's `log/`, as fetched from `mmsb serve` or read from a directory
//! picked on the local disk. The `mmsb` crate's replay reads them through it
//! exactly as it reads a directory on disk.

use mmsb::vfs::{MemFile, Vfs, VfsFile, VfsRead};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The state directory's path inside a [`MemVfs`] (any fixed path would do:
/// nothing here touches a real file system).
pub const ROOT: &str = "/state";

/// The files of one log directory, by name.
#[derive(Debug, Default, Clone)]
pub struct MemVfs {
    files: BTreeMap<String, Arc<Vec<u8>>>,
}

fn refused(what: &str, path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("read-only: will not {what} {}", path.display()))
}

impl MemVfs {
    /// The log directory's path.
    pub fn log_dir() -> PathBuf {
        mmsb_log_dir(Path::new(ROOT))
    }

    /// Set a file's whole contents (a new file, or one replaced).
    pub fn set(&mut self, name: &str, bytes: Vec<u8>) {
        self.files.insert(name.to_string(), Arc::new(bytes));
    }

    /// Append `bytes` to `name` at `offset`, which must be the file's
    /// current length (a new file starts at 0).
    ///
    /// # Errors
    /// A message naming the file and both offsets when `offset` is not the
    /// current length (bytes missing or fetched twice): nothing changes.
    pub fn append(&mut self, name: &str, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let have = self.len(name).unwrap_or(0);
        if offset != have {
            return Err(format!("{name}: bytes at offset {offset} do not follow the {have} bytes held"));
        }
        let f = self.files.entry(name.to_string()).or_default();
        Arc::make_mut(f).extend_from_slice(bytes);
        Ok(())
    }

    /// Forget a file (one the directory no longer lists).
    pub fn forget(&mut self, name: &str) {
        self.files.remove(name);
    }

    /// A file's length, when it is held.
    pub fn len(&self, name: &str) -> Option<u64> {
        self.files.get(name).map(|f| f.len() as u64)
    }

    /// Names and lengths of the files held, sorted by name.
    pub fn files(&self) -> impl Iterator<Item = (&str, u64)> {
        self.files.iter().map(|(n, b)| (n.as_str(), b.len() as u64))
    }

    /// Whether no file is held.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The file at `path`, which must be directly inside the log directory.
    fn get(&self, path: &Path) -> io::Result<&Arc<Vec<u8>>> {
        let name = (path.parent() == Some(Self::log_dir().as_path()))
            .then(|| path.file_name().and_then(|n| n.to_str()))
            .flatten();
        name.and_then(|n| self.files.get(n))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display())))
    }
}

/// `mmsb`'s log directory of a state directory (its one layout rule that
/// this crate needs).
fn mmsb_log_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("log")
}

impl Vfs for MemVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        Err(refused("create", dir))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        if dir == Self::log_dir() {
            Ok(self.files.keys().cloned().collect())
        } else if dir == Path::new(ROOT) {
            Ok(vec!["log".to_string()])
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, format!("{} not found", dir.display())))
        }
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.get(path).map(|b| b.to_vec())
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn VfsRead>> {
        // Shared, not copied: a segment is read in windows.
        Ok(Box::new(MemFile(Shared(Arc::clone(self.get(path)?)))))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        Err(refused("create", path))
    }
    fn rename(&self, from: &Path, _to: &Path) -> io::Result<()> {
        Err(refused("rename", from))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        Err(refused("remove", path))
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

/// A file's bytes shared with the [`MemVfs`] that holds them.
#[derive(Debug)]
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_reads_and_appends_only_in_order() {
        let mut v = MemVfs::default();
        v.set("wal-0000000000000001.log", vec![1, 2]);
        v.append("wal-0000000000000001.log", 2, &[3]).unwrap();
        assert!(v.append("wal-0000000000000001.log", 5, &[9]).is_err());
        assert_eq!(v.len("wal-0000000000000001.log"), Some(3));
        let log = MemVfs::log_dir();
        assert_eq!(v.list(&log).unwrap(), vec!["wal-0000000000000001.log".to_string()]);
        assert_eq!(v.read(&log.join("wal-0000000000000001.log")).unwrap(), vec![1, 2, 3]);
        let mut f = v.open_read(&log.join("wal-0000000000000001.log")).unwrap();
        let mut b = [0u8; 2];
        f.read_exact_at(&mut b, 1).unwrap();
        assert_eq!(b, [2, 3]);
        assert!(f.read_exact_at(&mut b, 2).is_err());
        // Only the log directory's own files.
        assert!(v.read(Path::new("/state/wal-0000000000000001.log")).is_err());
        assert!(v.read(&log.join("../log/wal-0000000000000001.log")).is_err());
        assert!(v.list(Path::new("/elsewhere")).is_err());
        assert!(v.create(&log.join("x")).is_err());
        v.forget("wal-0000000000000001.log");
        assert!(v.is_empty());
    }
}
