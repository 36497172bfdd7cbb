"""Checkpoints, replay to an LSN or a time, page history, provenance and
the state hash against the CLI's."""

import subprocess

import numpy as np
import pytest

import mmsb
from mmsb_testutil import cli_path


def test_replay_history_provenance(state_dir):
    with mmsb.open(state_dir) as s:
        a, d = s.create_page(8), s.create_page(8)

        def double(inputs, out):
            out[:] = (inputs[0].view(np.int64) * 2).view(np.uint8)

        s.register_function("double", double)
        s.derive(d, "double", [a])
        marks = []
        for v in (1, 2, 3):
            s.update(a, np.array([v], np.int64))
            marks.append((s.lsn(), s.time(), s.state_hash()))
        s.update(a, np.array([4], np.int64))
        for lsn, t, h in marks:
            r = s.replay_to(lsn=lsn)
            assert r.state_hash == h and r.lsn == lsn
            assert s.replay_to(time=t).state_hash == h
        assert s.replay_to().state_hash == s.state_hash()
        assert s.replay_to(lsn=marks[0][0]).array(d, np.int64)[0] == 2
        with pytest.raises(mmsb.ConfigError):
            s.replay_to(lsn=1, time=1)
        hist = s.history(d)
        assert [int(v.array(np.int64)[0]) for v in hist][-4:] == [2, 4, 6, 8]
        assert [v.epoch for v in hist] == sorted(v.epoch for v in hist)
        prov = s.provenance(d)
        assert prov.steps[0]["page"] == d and prov.steps[0]["origin"] == "derived"
        assert prov.steps[0]["function"] == "double"
        roots = prov.roots()
        assert roots and roots[0]["page"] == a and roots[0]["origin"] == "user"
        assert "double v1" in str(prov)
        with pytest.raises(mmsb.PageNotFoundError):
            s.history(999)
        # A checkpoint retires the log before it: replay starts there.
        cp = s.checkpoint()
        assert cp["lsn"] == s.lsn()
        with pytest.raises(mmsb.ConfigError):
            s.replay_to(lsn=marks[0][0])
        assert s.replay_to().state_hash == s.state_hash()
        final = s.state_hash()
    # Reopened, the state is the same.
    with mmsb.open(state_dir, create=False) as s:
        assert s.state_hash() == final


def test_state_hash_equals_cli(state_dir):
    cli = cli_path()
    if cli is None:
        pytest.skip("no mmsb CLI built (cargo build --bin mmsb, or set MMSB_CLI)")
    with mmsb.open(state_dir) as s:
        p = s.create_page(32)
        s.update(p, np.arange(32, dtype=np.uint8))
        s.update(p, runs=[(3, b"xyz")])
        h = s.state_hash()
    out = subprocess.run([cli, "replay", state_dir], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1].split()[-1] == h
