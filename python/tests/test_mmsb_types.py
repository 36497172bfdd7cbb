"""The package type-checks (inline annotations, the native module's
stubs, py.typed), and so does a program using it; a wrong use is caught."""

import os
import subprocess
import sys

USE = '''
import numpy as np
import mmsb

def total(state: mmsb.State, page: int) -> float:
    with state.read(page) as g:
        return float(g.array(np.float64).sum())

with mmsb.open() as s:
    p: int = s.create_page(16)
    e: int = s.update(p, np.zeros(2))
    h: str = s.state_hash()
    r: mmsb.Replayed = s.replay_to(lsn=s.lsn())
    v: mmsb.DeviceView | None = None
'''


def mypy(tmp_path, *args):
    env = dict(os.environ, MYPY_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", *args],
                          capture_output=True, text=True, cwd=tmp_path, env=env)


def test_package_and_a_user_type_check(tmp_path):
    r = mypy(tmp_path, "-p", "mmsb")
    assert r.returncode == 0, r.stdout + r.stderr
    (tmp_path / "use.py").write_text(USE)
    r = mypy(tmp_path, "use.py")
    assert r.returncode == 0, r.stdout + r.stderr
    (tmp_path / "bad.py").write_text("import mmsb\nx: str = mmsb.open().create_page(4)\n")
    r = mypy(tmp_path, "bad.py")
    assert r.returncode != 0 and "incompatible types" in r.stdout.lower()
