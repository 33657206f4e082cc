#!/usr/bin/env python3
"""Prints which top-level modules of the `chengis` crate use which (`crate::NAME` paths and
`super::` from a module's own root), and every cycle among them. Crate boundaries are held by
the compiler; this shows what is left inside the one crate. Exit code 1 when there is a cycle.
Usage: scripts/module-deps.py [host/src]"""
import os, re, sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "host", "src")
modules = sorted(
    n[:-3] if n.endswith(".rs") else n
    for n in os.listdir(root)
    if n not in ("lib.rs", "main.rs") and (n.endswith(".rs") or os.path.isdir(os.path.join(root, n)))
)
aliases = {}  # `pub use other_crate as name` in lib.rs: not modules of this crate
lib = open(os.path.join(root, "lib.rs")).read()
for m in re.finditer(r"pub use [a-z_:]+ as ([a-z_]+);|pub use [a-z_]+::([a-z_]+);", lib):
    aliases[m.group(1) or m.group(2)] = True
uses = {m: set() for m in modules}
for m in modules:
    path = os.path.join(root, m)
    files = [path + ".rs"] if os.path.isfile(path + ".rs") else [
        os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".rs")
    ]
    for f in files:
        text = open(f).read()
        for other in re.findall(r"crate::([a-z_]+)", text):
            if other != m and other in uses and other not in aliases:
                uses[m].add(other)
for m in modules:
    print(f"{m:10} -> {', '.join(sorted(uses[m])) or '(nothing)'}")
cycles = set()
def walk(start, node, seen):
    for n in uses[node]:
        if n == start:
            cycles.add(tuple(sorted(seen)))
        elif n not in seen and n > start:
            walk(start, n, seen + [n])
for m in modules:
    walk(m, m, [m])
for c in sorted(cycles):
    print("cycle:", " <-> ".join(c))
sys.exit(1 if cycles else 0)
