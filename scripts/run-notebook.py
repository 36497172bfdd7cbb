#!/usr/bin/env python3
"""Execute docs/tutorial.ipynb from top to bottom (nbclient) and print its
text output; exit 1 on any error. Prints `SKIP notebook: ...` and exits 0
when nbclient, nbformat, ipykernel or matplotlib is not installed (the GPU
machine of scripts/gpu-check.sh may lack them). The CPU suite runs the same
notebook through python/tests/test_mmsb_notebook.py."""

import os
import sys

try:
    import ipykernel  # noqa: F401
    import matplotlib  # noqa: F401
    import nbformat
    from nbclient import NotebookClient
except ImportError as e:
    print(f"SKIP notebook: {e}")
    sys.exit(0)

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
nb = nbformat.read(os.path.join(root, "docs", "tutorial.ipynb"), as_version=4)
try:
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
except Exception as e:  # noqa: BLE001
    print(f"FAIL notebook: {type(e).__name__}: {e}")
    sys.exit(1)
for c in nb.cells:
    if c.cell_type == "code":
        for o in c.get("outputs", []):
            sys.stdout.write(o.get("text", ""))
print("PASS notebook")
