"""The README's Python example runs as printed."""

import os
import re

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_readme_python_example(tmp_path, monkeypatch, capsys):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    for b in blocks:
        exec(compile(b, "README.md", "exec"), {})
    out = capsys.readouterr().out.split()
    assert len(out[-1]) == 32 and int(out[-1], 16) >= 0  # the state hash
