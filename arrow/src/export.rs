//! Writing the tables to files: a directory of one Parquet (or Arrow IPC)
//! file per table and a `manifest.json`, made beside the output path and
//! renamed onto it only when everything is written, so that a failed or
//! refused export leaves nothing behind.

use crate::history::{visit, Options, Summary};
use crate::schema::{Table, FORMAT_VERSION};
use arrow_array::RecordBatch;
use mmsb::vfs::Vfs;
use mmsb::{Error, Result};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// The files' format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet (Snappy-compressed column chunks), `<table>.parquet`.
    #[default]
    Parquet,
    /// The Arrow IPC file format (Feather v2, uncompressed), `<table>.arrow`.
    Arrow,
}

impl Format {
    /// The files' extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Arrow => "arrow",
        }
    }
}

/// How to export.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// What to read and how to cut it.
    pub history: Options,
    /// The files' format.
    pub format: Format,
    /// Replace an output directory that exists, when it is an earlier
    /// export (it holds this crate's `manifest.json`) or empty. Anything
    /// else is refused even so.
    pub force: bool,
}

/// Name of the manifest file in an export.
pub const MANIFEST: &str = "manifest.json";

/// Bytes of encoded rows a Parquet file's writer holds before it writes
/// them out as a row group.
pub const ROW_GROUP_BYTES: usize = 8 << 20;

fn arrow_err(e: impl std::fmt::Display) -> Error {
    Error::Serialization(format!("arrow: {e}"))
}

enum Writer {
    Parquet(ArrowWriter<File>),
    Ipc(arrow_ipc::writer::FileWriter<BufWriter<File>>),
}

impl Writer {
    fn create(path: &Path, table: Table, format: Format) -> Result<Writer> {
        let file = File::create(path).map_err(|e| Error::from(e).in_file(path))?;
        let schema = table.schema();
        Ok(match format {
            Format::Parquet => {
                let mut props = WriterProperties::builder();
                let columns =
                    parquet::arrow::ArrowSchemaConverter::new().convert(&schema).map_err(arrow_err)?;
                for c in columns.columns() {
                    let path = c.path().clone();
                    match path.parts().first().map(String::as_str) {
                        // Page and delta bytes: no dictionary (values rarely
                        // repeat, and a dictionary is memory held until the
                        // row group ends), no min/max statistics.
                        Some("bytes" | "mask") => {
                            props = props
                                .set_column_dictionary_enabled(path.clone(), false)
                                .set_column_statistics_enabled(path, EnabledStatistics::None);
                        }
                        // Byte runs and parent lists: ascending offsets and
                        // small lengths, which delta packing stores in a few
                        // bits each (a dense payload's runs can number a
                        // quarter of its page), with nothing left to compress.
                        Some("ranges" | "parents") => {
                            props = props
                                .set_column_dictionary_enabled(path.clone(), false)
                                .set_column_encoding(path.clone(), Encoding::DELTA_BINARY_PACKED)
                                .set_column_compression(path.clone(), Compression::UNCOMPRESSED)
                                .set_column_statistics_enabled(path, EnabledStatistics::None);
                        }
                        _ => {}
                    }
                }
                let props = props
                    .set_compression(Compression::SNAPPY)
                    .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
                    .set_created_by(format!("mmsb-arrow {}", env!("CARGO_PKG_VERSION")))
                    .build();
                Writer::Parquet(ArrowWriter::try_new(file, schema, Some(props)).map_err(arrow_err)?)
            }
            Format::Arrow => Writer::Ipc(
                arrow_ipc::writer::FileWriter::try_new(BufWriter::new(file), &schema).map_err(arrow_err)?,
            ),
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match self {
            Writer::Parquet(w) => {
                w.write(batch).map_err(arrow_err)?;
                // Bounded memory whatever the row group settings do.
                if w.in_progress_size() >= ROW_GROUP_BYTES {
                    w.flush().map_err(arrow_err)?;
                }
                Ok(())
            }
            Writer::Ipc(w) => w.write(batch).map_err(arrow_err),
        }
    }

    /// Finish the file. It is not fsynced: an export is made again from
    /// the state directory, and after a crash its output is either whole
    /// (the rename happened) or a staging directory to remove.
    fn close(self, path: &Path) -> Result<()> {
        match self {
            Writer::Parquet(w) => w.close().map(drop).map_err(arrow_err),
            Writer::Ipc(mut w) => {
                w.finish().map_err(arrow_err)?;
                let f = w.into_inner().map_err(arrow_err)?;
                f.into_inner().map(drop).map_err(|e| Error::from(e.into_error()).in_file(path))
            }
        }
    }
}

/// Whether `out` may be replaced with `--force`: an earlier export or an
/// empty directory.
fn replaceable(out: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(out).map_err(|e| Error::from(e).in_file(out))?;
    if !meta.is_dir() {
        return Err(Error::Config(format!(
            "{} exists and is not a directory; --force replaces only an earlier export or an empty directory",
            out.display()
        )));
    }
    let mut entries = std::fs::read_dir(out).map_err(|e| Error::from(e).in_file(out))?;
    if entries.next().is_none() {
        return Ok(());
    }
    let manifest = std::fs::read(out.join(MANIFEST)).ok();
    let is_export = manifest
        .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m).ok())
        .is_some_and(|v| v.get("format").and_then(|f| f.as_str()) == Some("mmsb-export"));
    if !is_export {
        return Err(Error::Config(format!(
            "{} exists and is not an earlier export (no {MANIFEST} of one); --force replaces only an \
             earlier export or an empty directory",
            out.display()
        )));
    }
    Ok(())
}

/// A directory beside `out` for the files being written; removed on drop
/// unless it was renamed onto `out`.
struct Staging(Option<PathBuf>);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Export `state_dir`'s pages and history (read with `vfs`) to the
/// directory `out`: one file per table ([`Table::ALL`]) and a
/// [`MANIFEST`]. The files are written beside `out` and renamed onto it at
/// the end: an error leaves `out` as it was.
///
/// # Errors
/// [`Error::Config`] when `out` exists (without [`ExportOptions::force`],
/// or when it is neither an earlier export nor empty); as [`visit`] for
/// the state directory (damage is an error exactly where `mmsb replay`
/// finds it); [`Error::Io`] and [`Error::Serialization`] for the files.
pub fn export_with(vfs: &dyn Vfs, state_dir: &Path, out: &Path, opts: &ExportOptions) -> Result<Summary> {
    let exists = std::fs::symlink_metadata(out).is_ok();
    if exists && !opts.force {
        return Err(Error::Config(format!("{} exists; --force replaces an earlier export", out.display())));
    }
    if exists {
        replaceable(out)?;
    }
    let name = out
        .file_name()
        .ok_or_else(|| Error::Config(format!("{} names no directory to create", out.display())))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = parent.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| Error::from(e).in_file(&staging))?;
    let mut guard = Staging(Some(staging.clone()));
    let path_of = |t: Table| staging.join(format!("{}.{}", t.name(), opts.format.extension()));
    let mut writers: Vec<(Table, Writer)> = Vec::new();
    for t in Table::ALL {
        writers.push((t, Writer::create(&path_of(t), t, opts.format)?));
    }
    let summary = visit(vfs, state_dir, &opts.history, &mut |table, batch| match writers
        .iter_mut()
        .find(|(t, _)| *t == table)
    {
        Some((_, w)) => w.write(&batch),
        None => Ok(()),
    })?;
    for (t, w) in writers {
        w.close(&path_of(t))?;
    }
    let manifest = manifest(state_dir, &summary, opts);
    let manifest_path = staging.join(MANIFEST);
    std::fs::write(&manifest_path, manifest).map_err(|e| Error::from(e).in_file(&manifest_path))?;
    if exists {
        std::fs::remove_dir_all(out).map_err(|e| Error::from(e).in_file(out))?;
    }
    std::fs::rename(&staging, out).map_err(|e| Error::from(e).in_file(out))?;
    guard.0 = None;
    Ok(summary)
}

/// [`export_with`] on the real file system.
///
/// # Errors
/// As [`export_with`].
pub fn export(state_dir: &Path, out: &Path, opts: &ExportOptions) -> Result<Summary> {
    export_with(&mmsb::vfs::StdVfs, state_dir, out, opts)
}

fn manifest(state_dir: &Path, s: &Summary, opts: &ExportOptions) -> String {
    let tables: serde_json::Map<String, serde_json::Value> = Table::ALL
        .iter()
        .map(|t| {
            (
                t.name().to_string(),
                serde_json::json!({
                    "file": format!("{}.{}", t.name(), opts.format.extension()),
                    "rows": s.rows_of(*t),
                }),
            )
        })
        .collect();
    let until = match opts.history.until {
        mmsb::history::replay::Until::End => serde_json::json!("end"),
        mmsb::history::replay::Until::Lsn(l) => serde_json::json!({ "lsn": l.0 }),
        mmsb::history::replay::Until::Time(t) => serde_json::json!({ "time": t }),
    };
    let v = serde_json::json!({
        "format": "mmsb-export",
        "format_version": FORMAT_VERSION,
        "source": state_dir.display().to_string(),
        "until": until,
        "from_lsn": s.from_lsn,
        "lsn": s.lsn.0,
        "time": s.timestamp,
        "state_hash": format!("{:032x}", s.state_hash),
        "with_bytes": opts.history.with_bytes,
        "file_format": opts.format.extension(),
        "torn_tail": s.torn.as_ref().map(|t| serde_json::json!({
            "file": t.file.display().to_string(),
            "offset": t.offset,
            "bytes": t.bytes,
        })),
        "tables": tables,
    });
    let mut text = serde_json::to_string_pretty(&v).unwrap_or_default();
    text.push('\n');
    text
}
