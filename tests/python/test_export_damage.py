"""`mmsb export` on damaged input and on an output path that exists: it
stops exactly where `mmsb replay` stops and says the same."""

import json
import pathlib
import shutil

from conftest import connect


def segments(d: pathlib.Path) -> list[pathlib.Path]:
    return sorted((d / "log").glob("wal-*.log"))


def copy_state(demo, tmp_path) -> pathlib.Path:
    d = tmp_path / "state"
    shutil.copytree(demo, d)
    (d / "log" / "LOCK").unlink(missing_ok=True)
    return d


def test_a_flipped_byte_is_refused_with_replays_error(mmsb, demo, tmp_path):
    d = copy_state(demo, tmp_path)
    seg = max(segments(d), key=lambda p: p.stat().st_size)
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x40
    seg.write_bytes(data)
    replay = mmsb("replay", d, check=False)
    assert replay.returncode == 1 and "error" in replay.stderr
    out = tmp_path / "out"
    export = mmsb("export", d, out, check=False)
    assert export.returncode == 1
    # The same error, word for word (the file and offset of the damage).
    assert export.stderr == replay.stderr
    assert str(seg) in export.stderr
    # Nothing is left behind: not the output, not a partial one.
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_a_torn_tail_ends_the_export_where_replay_ends(mmsb, demo, tmp_path):
    d = copy_state(demo, tmp_path)
    # The first bytes of a record whose write never completed, at the end
    # of the last segment (a clean stop leaves an empty one after the rest).
    seg = segments(d)[-1]
    with open(seg, "ab") as f:
        f.write(bytes([74, 0, 0, 0, 3, 0, 0]))
    replay = mmsb("replay", d)
    assert "torn tail" in replay.stderr
    out = tmp_path / "out"
    export = mmsb("export", d, out)
    assert export.stderr == replay.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["state_hash"] == replay.stdout.strip().splitlines()[-1].split(": ")[1]
    assert m["torn_tail"]["file"] == str(seg)
    con = connect(out)
    assert con.execute("SELECT max(last_lsn) FROM commits").fetchone()[0] == m["lsn"]


def test_an_output_that_exists_is_refused_unless_forced(mmsb, demo, tmp_path):
    out = tmp_path / "out"
    mmsb("export", demo, out, "--to", "100")
    again = mmsb("export", demo, out, check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    assert json.loads((out / "manifest.json").read_text())["until"] == {"lsn": 100}
    mmsb("export", demo, out, "--force")
    assert json.loads((out / "manifest.json").read_text())["until"] == "end"
    # --force replaces an earlier export or an empty directory, nothing else.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    refused = mmsb("export", demo, other, "--force", check=False)
    assert refused.returncode == 1 and "not an earlier export" in refused.stderr
    assert (other / "keep.txt").read_text() == "mine"
    f = tmp_path / "file"
    f.write_text("x")
    assert mmsb("export", demo, f, check=False).returncode == 1
    assert mmsb("export", demo, f, "--force", check=False).returncode == 1
    assert f.read_text() == "x"
