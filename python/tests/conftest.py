"""Fixtures of the Python suite: a state in a fresh directory."""

import os
import sys

import pytest

import mmsb


@pytest.fixture
def state(tmp_path):
    s = mmsb.open(str(tmp_path / "state"), durability="none")
    yield s
    s.close()


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path / "state")


def cli_path():
    """The `mmsb` CLI: $MMSB_CLI (which must exist when set), else the
    workspace's debug or release build, else None."""
    env = os.environ.get("MMSB_CLI")
    if env:
        assert os.path.exists(env), f"MMSB_CLI={env} does not exist"
        return env
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    for p in ("target/debug/mmsb", "target/release/mmsb"):
        full = os.path.join(root, p)
        if os.path.exists(full):
            return full
    return None


sys.path.insert(0, os.path.dirname(__file__))
