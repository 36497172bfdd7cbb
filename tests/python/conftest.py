"""Fixtures of the SQL tests: the `mmsb` binary, a demo state directory
that keeps its whole log, and its exports (Parquet, and Arrow IPC)."""

import os
import pathlib
import shutil
import subprocess

import duckdb
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TABLES = ["pages", "commits", "deltas", "graph_nodes", "graph_edges"]
# Small enough to take about a second, large enough that every payload
# kind, the large pages and many propagations appear.
DEMO_DELTAS = "3000"


def _binary() -> pathlib.Path:
    given = os.environ.get("MMSB_BIN")
    if given:
        return pathlib.Path(given)
    if shutil.which("cargo"):
        # A no-op when `cargo test` (scripts/test.sh's first half) built it.
        subprocess.run(
            ["cargo", "build", "--quiet", "-p", "mmsb-cli", "--bin", "mmsb"],
            cwd=ROOT,
            check=True,
        )
    path = ROOT / "target" / "debug" / "mmsb"
    if not path.exists():
        pytest.fail(f"no mmsb binary at {path}: build it, or set MMSB_BIN")
    return path


@pytest.fixture(scope="session")
def mmsb():
    binary = _binary()

    def run(*args, check=True):
        p = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True)
        if check and p.returncode != 0:
            raise AssertionError(f"mmsb {' '.join(map(str, args))}: exit {p.returncode}\n{p.stderr}")
        return p

    return run


@pytest.fixture(scope="session")
def demo(mmsb, tmp_path_factory):
    """A demo state directory whose log holds the whole run (no checkpoint)."""
    d = tmp_path_factory.mktemp("demo") / "state"
    mmsb("demo", "--dir", d, "--deltas", DEMO_DELTAS, "--seed", "7", "--keep-log")
    return d


@pytest.fixture(scope="session")
def export(mmsb, demo, tmp_path_factory):
    """`mmsb export DEMO OUT --with-bytes` (Parquet)."""
    out = tmp_path_factory.mktemp("export") / "out"
    mmsb("export", demo, out, "--with-bytes")
    return out


def connect(out: pathlib.Path, ext: str = "parquet") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per exported table (docs/SQL.md)."""
    con = duckdb.connect()
    for t in TABLES:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{out / (t + '.' + ext)}')")
    return con


@pytest.fixture()
def sql(export):
    con = connect(export)
    yield con
    con.close()
