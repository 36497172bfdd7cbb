#!/usr/bin/env python3
"""Fail when the top-level modules of the `mmsb` crate import each other in a cycle.

The layers of host/src (docs/ARCHITECTURE.md) point one way: a module may use
the modules below it, never one above. This check reads every source file,
collects the `crate::…` paths its code names (comments and `#[cfg(test)]`
modules left out: a test may reach anywhere), resolves names re-exported at the
crate root to the module that defines them, and reports each strongly
connected set of more than one module, with one import that closes it.

    python3 scripts/module-cycles.py [host/src]      # exit 1 on a cycle
    python3 scripts/module-cycles.py --graph         # print the edges too
"""

import re
import sys
from pathlib import Path

ROOT_REEXPORT = re.compile(r"pub use (?:self::|crate::)?([a-z_][a-z0-9_]*)(?:::[a-z_][a-z0-9_]*)*::(\{[^;]*\}|[A-Za-z0-9_]+)\s*;", re.S)
CRATE_PATH = re.compile(r"crate::([A-Za-z_][A-Za-z0-9_]*)")
USE_GROUP = re.compile(r"use crate::\{([^;]*)\};", re.S)


def strip(text):
    """The code of a file without comments and without its test modules."""
    out = []
    skip_depth = None
    depth = 0
    pending_test = False
    for line in text.splitlines():
        code = line.split("//", 1)[0]
        s = code.strip()
        if skip_depth is None and s.startswith("#[cfg(test)]"):
            pending_test = True
            continue
        if pending_test:
            pending_test = False
            if s.startswith("mod ") and "{" in s:
                skip_depth = depth
                depth += code.count("{") - code.count("}")
                continue
        opens, closes = code.count("{"), code.count("}")
        if skip_depth is not None:
            depth += opens - closes
            if depth <= skip_depth:
                skip_depth = None
            continue
        depth += opens - closes
        out.append(code)
    return "\n".join(out)


def top_module(src, path):
    rel = path.relative_to(src)
    if len(rel.parts) == 1:
        return None if rel.stem == "lib" else rel.stem
    return rel.parts[0]


def root_names(lib_text):
    """Names re-exported at the crate root, mapped to their module."""
    names = {}
    for m in ROOT_REEXPORT.finditer(strip(lib_text)):
        module, items = m.group(1), m.group(2)
        for item in re.split(r"[{},\s]+", items):
            if item and item[0].isupper():
                names[item.split(" as ")[-1]] = module
    return names


def edges(src):
    lib = (src / "lib.rs").read_text()
    names = root_names(lib)
    modules = {top_module(src, p) for p in src.rglob("*.rs")} - {None}
    found = {}
    for path in sorted(src.rglob("*.rs")):
        me = top_module(src, path)
        if me is None:
            continue
        code = strip(path.read_text())
        refs = [m.group(1) for m in CRATE_PATH.finditer(code)]
        for g in USE_GROUP.finditer(code):
            for part in re.split(r",(?![^{]*\})", g.group(1)):
                head = part.strip().split("::")[0].split(" as ")[0].strip()
                if head:
                    refs.append(head)
        for r in refs:
            target = r if r in modules else names.get(r)
            if target in modules and target != me:
                found.setdefault((me, target), f"{path.relative_to(src.parent)}: crate::{r}")
    return modules, found


def cycles(modules, found):
    graph = {m: sorted({b for (a, b) in found if a == m}) for m in modules}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for m in sorted(modules):
        if m not in index:
            visit(m)
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    src = Path(args[0] if args else "host/src")
    modules, found = edges(src)
    if "--graph" in sys.argv:
        for (a, b), why in sorted(found.items()):
            print(f"{a} -> {b}    ({why})")
    bad = cycles(modules, found)
    for comp in bad:
        print(f"import cycle between top-level modules: {', '.join(comp)}")
        for (a, b), why in sorted(found.items()):
            if a in comp and b in comp:
                print(f"    {a} -> {b}: {why}")
    if bad:
        sys.exit(1)
    print(f"module-cycles: {len(modules)} top-level modules, {len(found)} imports, no cycle")


if __name__ == "__main__":
    main()
