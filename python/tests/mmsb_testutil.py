"""Helpers of the mmsb package's tests (a name no other suite uses)."""

import os


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

