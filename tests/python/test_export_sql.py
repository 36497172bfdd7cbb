"""SQL over `mmsb export`, checked against MMSB's own answers: the state
hash (`mmsb replay`), bytes written per page (`mmsb stats --pages`), the
provenance of a derived page (`mmsb stats --provenance`), and the five
queries of docs/SQL.md, each run as the document shows it."""

import json
import re

import pyarrow.ipc
import pyarrow.parquet
import pytest
import xxhash

from conftest import ROOT, TABLES, connect


def state_hash(rows) -> str:
    """docs/FORMAT.md's recipe: XXH3-128 over every page in page_id order
    (page_id, length, epoch as u64 little-endian, then the bytes), then the
    page count as u64 little-endian; 32 lower-case hex digits."""
    h = xxhash.xxh3_128()
    n = 0
    for page_id, length, epoch, data in rows:
        h.update(page_id.to_bytes(8, "little"))
        h.update(length.to_bytes(8, "little"))
        h.update(epoch.to_bytes(8, "little"))
        h.update(data)
        n += 1
    h.update(n.to_bytes(8, "little"))
    return h.hexdigest()


PAGES_FOR_HASH = "SELECT page_id, length, epoch, bytes FROM pages ORDER BY page_id"


def replay_hash(mmsb, *args) -> str:
    out = mmsb("replay", *args).stdout.strip().splitlines()
    assert out[-1].startswith("state hash: ")
    return out[-1].split(": ")[1]


def test_state_hash_recomputed_from_the_pages_table_equals_replay(mmsb, demo, sql, export):
    rows = sql.execute(PAGES_FOR_HASH).fetchall()
    assert len(rows) == 9
    expect = replay_hash(mmsb, demo)
    assert state_hash(rows) == expect
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["state_hash"] == expect
    # A different state gives a different hash: the recipe is not vacuous.
    assert state_hash(rows[:-1]) != expect


@pytest.mark.parametrize("point", [("--to", "2500"), ("--to-time", "1800")])
def test_an_export_to_a_point_is_the_state_replay_gives_there(mmsb, demo, tmp_path, point):
    out = tmp_path / "at"
    mmsb("export", demo, out, *point)
    con = connect(out)
    assert state_hash(con.execute(PAGES_FOR_HASH).fetchall()) == replay_hash(mmsb, demo, *point)
    m = json.loads((out / "manifest.json").read_text())
    last = con.execute("SELECT max(last_lsn), max(time_last) FROM commits").fetchone()
    assert (m["lsn"], m["time"]) == last
    if point[0] == "--to":
        assert m["lsn"] <= 2500 and con.execute("SELECT max(lsn) FROM deltas").fetchone()[0] <= 2500
    else:
        assert m["time"] <= 1800


def test_bytes_written_per_page_equal_stats(mmsb, demo, sql):
    stats = {}
    for line in mmsb("stats", demo, "--pages").stdout.splitlines():
        m = re.fullmatch(r"page (\d+) (\S+): (\d+) deltas \((\d+) derived\), (\d+) bytes written", line)
        assert m, line
        stats[int(m[1])] = (m[2], int(m[3]), int(m[4]), int(m[5]))
    rows = sql.execute(
        """
        SELECT d.page_id, coalesce(p.name, '-'), count(*),
               count(*) FILTER (WHERE d.source = 'derived'), sum(d.bytes_written)
        FROM deltas d LEFT JOIN pages p USING (page_id)
        GROUP BY d.page_id, p.name ORDER BY d.page_id
        """
    ).fetchall()
    assert {r[0]: tuple(r[1:]) for r in rows} == stats
    assert len(stats) == 9
    # The bytes column holds exactly the bytes counted, and the ranges (or,
    # for a dense payload of many runs, the mask) select exactly as many.
    bad = sql.execute(
        """
        SELECT count(*) FROM deltas
        WHERE octet_length(bytes) != bytes_written
           OR (ranges IS NULL) = (mask IS NULL)
           OR (mask IS NOT NULL AND kind != 'dense')
           OR (SELECT sum(r.len) FROM (SELECT unnest(ranges) AS r)) != bytes_written
        """
    ).fetchone()[0]
    assert bad == 0
    masks = sql.execute("SELECT mask, bytes_written FROM deltas WHERE mask IS NOT NULL").fetchall()
    assert len(masks) > 10
    for mask, written in masks:
        assert int.from_bytes(mask, "little").bit_count() == written


def provenance_from_sql(sql, page: int) -> list[str]:
    """`mmsb stats --provenance PAGE`'s lines, made from the deltas table:
    the lineage query of docs/SQL.md, printed as the command prints it."""
    rows = sql.execute(lineage_query(), {"page": page}).fetchall()
    lines = []
    for depth, page_id, epoch, delta_id, lsn, time, source, function, version in rows:
        line = f"{'  ' * depth}page {page_id} epoch {epoch} (delta {delta_id} at LSN {lsn}, time {time})"
        line += f": {function} v{version} of" if source == "derived" else ": user write"
        lines.append(line)
    return lines


def test_provenance_found_by_sql_equals_stats_provenance(mmsb, demo, sql):
    derived = sql.execute("SELECT id FROM graph_nodes WHERE derived").fetchall()
    assert len(derived) == 1
    page = derived[0][0]
    expect = mmsb("stats", demo, "--provenance", page).stdout.splitlines()
    got = provenance_from_sql(sql, page)
    assert got == expect
    assert len(got) == 3 and "digest v1 of" in got[0]


# The documented queries: docs/SQL.md, run exactly as it shows them.
SQL_DOC = ROOT / "docs" / "SQL.md"


def doc_queries() -> dict[str, str]:
    text = SQL_DOC.read_text()
    found = re.findall(r"<!-- query: (\S+) -->\s*```sql\n(.*?)```", text, re.S)
    return dict(found)


def lineage_query() -> str:
    return doc_queries()["lineage"]


def test_the_documentation_shows_five_queries():
    assert sorted(doc_queries()) == ["largest-deltas", "last-writer", "lineage", "never-read", "write-rate"]


def test_query_which_function_last_wrote_a_page(sql):
    q = doc_queries()["last-writer"]
    digest = sql.execute("SELECT id FROM graph_nodes WHERE derived").fetchone()[0]
    row = sql.execute(q, {"page": digest}).fetchone()
    latest = sql.execute("SELECT max(epoch_after) FROM deltas WHERE page_id = $p", {"p": digest}).fetchone()[0]
    assert row[:3] == ("derived", "digest", 1) and row[3] == latest
    assert sql.execute(q, {"page": 1}).fetchone()[:2] == ("user", None)


def test_query_write_rate_per_page(sql):
    rows = sql.execute(doc_queries()["write-rate"], {"bucket": 500}).fetchall()
    assert sum(r[2] for r in rows) == sql.execute("SELECT count(*) FROM deltas").fetchone()[0]
    assert {r[0] for r in rows} == set(range(1, 10))


def test_query_pages_never_read_since(sql):
    # Since the start every page but the digest's two parents was never
    # read by a recompute; since after the last write nothing was.
    rows = sql.execute(doc_queries()["never-read"], {"since": 0}).fetchall()
    parents = {r[0] for r in sql.execute("SELECT source FROM graph_edges").fetchall()}
    assert len(parents) == 2
    assert {r[0] for r in rows} == set(range(1, 10)) - parents
    end = sql.execute("SELECT max(time) FROM deltas").fetchone()[0]
    assert len(sql.execute(doc_queries()["never-read"], {"since": end}).fetchall()) == 9


def test_query_largest_deltas(sql):
    rows = sql.execute(doc_queries()["largest-deltas"]).fetchall()
    assert len(rows) == 10
    sizes = [r[4] for r in rows]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] == sql.execute("SELECT max(bytes_written) FROM deltas").fetchone()[0]


def test_arrow_files_hold_the_same_tables(mmsb, demo, export, tmp_path):
    out = tmp_path / "ipc"
    mmsb("export", demo, out, "--format", "arrow", "--with-bytes")
    for t in TABLES:
        with pyarrow.ipc.open_file(out / f"{t}.arrow") as f:
            ipc = f.read_all()
        parquet = pyarrow.parquet.read_table(export / f"{t}.parquet")
        assert ipc.schema.names == parquet.schema.names, t
        assert ipc.num_rows == parquet.num_rows > 0 or t == "graph_edges" and ipc.num_rows == 2
        assert ipc.equals(parquet.cast(ipc.schema)), t
    assert ipc.schema.metadata[b"mmsb.table"] == b"graph_edges"
