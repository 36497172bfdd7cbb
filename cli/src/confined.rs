//! A read-only [`Vfs`] confined to one directory: the offline commands read
//! a state directory through it and never follow a path out of it.
//!
//! Every path must lie under the root given on the command line; no
//! component below the root may be a symbolic link; only regular files are
//! listed and read (a FIFO or device node is refused, never opened for a
//! blocking read). Writes are refused: the offline commands change nothing.

use mmsb::vfs::{Vfs, VfsFile, VfsRead};
use std::io;
use std::path::{Component, Path, PathBuf};

/// Read-only access to the files under one directory.
#[derive(Debug, Clone)]
pub struct Confined {
    root: PathBuf,
}

fn denied(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, what)
}

impl Confined {
    /// Confine reads to `root`, which must be an existing directory (the
    /// root itself may be reached through a link: it is the directory the
    /// user named).
    ///
    /// # Errors
    /// `NotFound` / `NotADirectory`-like errors naming the path.
    pub fn new(root: &Path) -> io::Result<Confined> {
        let meta = std::fs::metadata(root)?;
        if !meta.is_dir() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a directory"));
        }
        Ok(Confined { root: root.to_path_buf() })
    }

    /// The directory reads are confined to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Check that `path` lies under the root and that nothing below the
    /// root on the way to it is a symbolic link; return its metadata.
    fn check(&self, path: &Path) -> io::Result<std::fs::Metadata> {
        let rel = path
            .strip_prefix(&self.root)
            .map_err(|_| denied(format!("{} is outside {}", path.display(), self.root.display())))?;
        let mut at = self.root.clone();
        let mut meta = std::fs::metadata(&at)?;
        for c in rel.components() {
            match c {
                Component::Normal(n) => at.push(n),
                _ => return Err(denied(format!("{} leaves {}", path.display(), self.root.display()))),
            }
            meta = std::fs::symlink_metadata(&at)?;
            if meta.file_type().is_symlink() {
                return Err(denied(format!("{} is a symbolic link; not followed", at.display())));
            }
        }
        Ok(meta)
    }
}

impl Confined {
    /// Open the regular file `path` under the root (checked before it is
    /// opened, and what was opened checked again); its length.
    fn open_file(&self, path: &Path) -> io::Result<(std::fs::File, u64)> {
        let meta = self.check(path)?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        let f = open_nofollow(path)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        Ok((f, meta.len()))
    }
}

/// A file under the root, read at offsets.
#[derive(Debug)]
struct ConfinedRead {
    file: std::fs::File,
    len: u64,
}

impl VfsRead for ConfinedRead {
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

impl Vfs for Confined {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        Err(denied(format!("read-only: will not create {}", dir.display())))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let meta = self.check(dir)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", dir.display()),
            ));
        }
        mmsb::vfs::list_entries(dir)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let (mut f, _) = self.open_file(path)?;
        let mut buf = Vec::new();
        io::Read::read_to_end(&mut f, &mut buf)?;
        Ok(buf)
    }

    /// Read at offsets, not the whole file: a scan holds a window of a
    /// segment, not the segment (the default would read it all first).
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn VfsRead>> {
        let (file, len) = self.open_file(path)?;
        Ok(Box::new(ConfinedRead { file, len }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        Err(denied(format!("read-only: will not create {}", path.display())))
    }

    fn rename(&self, from: &Path, _to: &Path) -> io::Result<()> {
        Err(denied(format!("read-only: will not rename {}", from.display())))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        Err(denied(format!("read-only: will not remove {}", path.display())))
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(unix)]
fn open_nofollow(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: a FIFO swapped in after the check cannot block the open.
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)
}

#[cfg(not(unix))]
fn open_nofollow(path: &Path) -> io::Result<std::fs::File> {
    std::fs::File::open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_outside_and_links() -> io::Result<()> {
        let outside = tempfile::tempdir()?;
        std::fs::write(outside.path().join("secret"), b"x")?;
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join("log"))?;
        std::fs::write(root.path().join("log/a"), b"a")?;
        let v = Confined::new(root.path())?;
        assert_eq!(v.read(&root.path().join("log/a"))?, b"a");
        assert!(v.read(&outside.path().join("secret")).is_err());
        assert!(v.read(&root.path().join("log/../../secret")).is_err());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("log/link"))?;
            std::os::unix::fs::symlink(outside.path(), root.path().join("out"))?;
            // Listed, so that a reader expecting a file there meets it,
            // and never read through.
            assert_eq!(v.list(&root.path().join("log"))?, vec!["a".to_string(), "link".to_string()]);
            assert!(v.read(&root.path().join("log/link")).is_err());
            assert!(v.list(&root.path().join("out")).is_err());
            assert!(v.read(&root.path().join("out/secret")).is_err());
        }
        Ok(())
    }
}
