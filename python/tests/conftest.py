"""Fixtures of the Python suite: a state in a fresh directory."""

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
