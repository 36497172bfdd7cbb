//! # mmsb-arrow: MMSB's remote memory adapter
//!
//! A state directory's pages and its whole history as Apache Arrow
//! record batches, written as Parquet or Arrow IPC files for analysts and
//! tools (DuckDB, pandas, Polars, Spark, graph tools), and a live page as
//! Arrow memory without a copy.
//!
//! | what | where |
//! |---|---|
//! | the tables and their schemas (stable names and types, docs/FORMAT.md) | [`schema`], [`Table`] |
//! | a directory's history as batches: a push pass, or an iterator | [`visit`], [`history`], [`HistoryBatches`] |
//! | the files of `mmsb export` | [`export()`], [`ExportOptions`], [`Format`] |
//! | a live CPU page as a [`arrow_buffer::Buffer`] or a typed array | [`page_buffer`], [`page_array`] |
//!
//! The history is read by the library's own replay (no second log
//! parser): every commit is validated as `mmsb replay` validates it, damage
//! stops the pass exactly where it stops `mmsb replay`, and memory stays
//! bounded by the state plus one batch per table however long the log is.
//!
//! ```
//! use mmsb::{Config, Mmsb, PageSpec, Payload};
//! use mmsb_arrow::{history, Options, Table};
//! # fn main() -> mmsb::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let state = Mmsb::start(Config::at(dir.path()))?;
//! let p = state.create_page(PageSpec::new(8).named("counters"))?;
//! state.update_page(p, Payload::Full(vec![1; 8]))?;
//! state.stop()?;
//! let mut deltas = 0;
//! for batch in history(dir.path().to_path_buf(), Options::default()).only(Table::Deltas) {
//!     deltas += batch?.num_rows();
//! }
//! assert_eq!(deltas, 1);
//! # Ok(())
//! # }
//! ```

mod export;
mod history;
mod page;
pub mod schema;
mod tables;

pub use export::{export, export_with, ExportOptions, Format, MANIFEST, ROW_GROUP_BYTES};
pub use history::{
    history, history_with, visit, HistoryBatches, Options, Summary, TableBatch, DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_ROWS,
};
pub use page::{page_array, page_buffer};
pub use schema::{Table, FORMAT_VERSION};
