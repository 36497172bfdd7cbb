//! The tables' schemas: stable column names and types (docs/FORMAT.md,
//! "Export tables"). A column is only ever added, at the end of a table,
//! with [`FORMAT_VERSION`] raised; none is renamed, retyped or removed.

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use std::sync::Arc;

/// Version of the tables' layout, written in each export's manifest and in
/// each file's schema metadata (`mmsb.format_version`).
pub const FORMAT_VERSION: u32 = 1;

/// One of the exported tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// The pages at the export point, one row each, with their bytes.
    Pages,
    /// Every committed unit of the history, one row each.
    Commits,
    /// Every delta of the history, one row each.
    Deltas,
    /// The dependency graph's nodes: every page at the export point.
    GraphNodes,
    /// The dependency graph's edges at the export point.
    GraphEdges,
}

impl Table {
    /// Every table, in the order an export delivers them: the history
    /// (commits and deltas, interleaved as the log is read), then the
    /// state at the export point.
    pub const ALL: [Table; 5] =
        [Table::Commits, Table::Deltas, Table::Pages, Table::GraphNodes, Table::GraphEdges];

    /// The table's name (its file's stem in an export).
    pub fn name(self) -> &'static str {
        match self {
            Table::Pages => "pages",
            Table::Commits => "commits",
            Table::Deltas => "deltas",
            Table::GraphNodes => "graph_nodes",
            Table::GraphEdges => "graph_edges",
        }
    }

    /// Its schema.
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Pages => pages(),
            Table::Commits => commits(),
            Table::Deltas => deltas(),
            Table::GraphNodes => graph_nodes(),
            Table::GraphEdges => graph_edges(),
        }
    }
}

fn u64f(name: &str) -> Field {
    Field::new(name, DataType::UInt64, false)
}

fn with_meta(fields: Vec<Field>, table: Table) -> SchemaRef {
    let meta = [
        ("mmsb.table".to_string(), table.name().to_string()),
        ("mmsb.format_version".to_string(), FORMAT_VERSION.to_string()),
    ];
    Arc::new(Schema::new(fields).with_metadata(meta.into_iter().collect::<std::collections::HashMap<_, _>>()))
}

/// The `metadata` column's entry type: `key` (UTF-8) to `value` (bytes).
pub(crate) fn metadata_entries() -> Field {
    Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Binary, false),
        ])),
        false,
    )
}

/// The struct of one `ranges` item: `offset`, `len`.
pub(crate) fn range_fields() -> Fields {
    Fields::from(vec![u64f("offset"), u64f("len")])
}

/// The struct of one `parents` item: `page_id`, `epoch`.
pub(crate) fn parent_fields() -> Fields {
    Fields::from(vec![u64f("page_id"), u64f("epoch")])
}

/// `pages`: `page_id`, `name`, `length`, `location`, `epoch`, `metadata`,
/// `bytes`.
pub fn pages() -> SchemaRef {
    with_meta(
        vec![
            u64f("page_id"),
            Field::new("name", DataType::Utf8, true),
            u64f("length"),
            Field::new("location", DataType::Utf8, false),
            u64f("epoch"),
            Field::new("metadata", DataType::Map(Arc::new(metadata_entries()), false), false),
            Field::new("bytes", DataType::LargeBinary, false),
        ],
        Table::Pages,
    )
}

/// `commits`: `first_lsn`, `last_lsn`, `time_first`, `time_last`,
/// `changes`, `kind`.
pub fn commits() -> SchemaRef {
    with_meta(
        vec![
            u64f("first_lsn"),
            u64f("last_lsn"),
            u64f("time_first"),
            u64f("time_last"),
            Field::new("changes", DataType::UInt32, false),
            Field::new("kind", DataType::Utf8, false),
        ],
        Table::Commits,
    )
}

/// `deltas`: `lsn`, `delta_id`, `time`, `page_id`, `epoch_before`,
/// `epoch_after`, `base_epoch`, `kind`, `ranges`, `mask`, `bytes_written`,
/// `bytes`, `source`, `function`, `function_version`, `parents`, `tag`.
pub fn deltas() -> SchemaRef {
    with_meta(
        vec![
            u64f("lsn"),
            u64f("delta_id"),
            u64f("time"),
            u64f("page_id"),
            u64f("epoch_before"),
            u64f("epoch_after"),
            Field::new("base_epoch", DataType::UInt64, true),
            Field::new("kind", DataType::Utf8, false),
            Field::new(
                "ranges",
                DataType::List(Arc::new(Field::new("item", DataType::Struct(range_fields()), false))),
                true,
            ),
            Field::new("mask", DataType::LargeBinary, true),
            u64f("bytes_written"),
            Field::new("bytes", DataType::LargeBinary, true),
            Field::new("source", DataType::Utf8, false),
            Field::new("function", DataType::Utf8, true),
            Field::new("function_version", DataType::UInt32, true),
            Field::new(
                "parents",
                DataType::List(Arc::new(Field::new("item", DataType::Struct(parent_fields()), false))),
                true,
            ),
            Field::new("tag", DataType::Utf8, true),
        ],
        Table::Deltas,
    )
}

/// `graph_nodes`: `id`, `name`, `derived`, `function`, `version`.
pub fn graph_nodes() -> SchemaRef {
    with_meta(
        vec![
            u64f("id"),
            Field::new("name", DataType::Utf8, true),
            Field::new("derived", DataType::Boolean, false),
            Field::new("function", DataType::Utf8, true),
            Field::new("version", DataType::UInt32, true),
        ],
        Table::GraphNodes,
    )
}

/// `graph_edges`: `source`, `target`, `kind`.
pub fn graph_edges() -> SchemaRef {
    with_meta(
        vec![u64f("source"), u64f("target"), Field::new("kind", DataType::Utf8, false)],
        Table::GraphEdges,
    )
}
