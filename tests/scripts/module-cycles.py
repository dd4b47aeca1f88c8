#!/usr/bin/env python3
"""Import cycles between drover's modules, and source files over the size limit.

Reads agent/src as text: a module is a top-level file or directory; it depends on every module
it names as `crate::NAME` outside its test module. Prints each cycle and each file whose code
(tests excluded) is longer than the limit, and exits 1 if there is any. See docs/ARCHITECTURE.md.
"""

import os
import re
import sys

LIMIT = 600


def modules(src):
    deps, sizes = {}, {}
    for root, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, src)
            module = rel[:-3].split(os.sep)[0]
            if module in ("main", "lib"):
                continue
            text = open(path, encoding="utf-8").read()
            cut = text.find("#[cfg(test)]")
            code = text if cut < 0 else text[:cut]
            sizes[rel] = code.count("\n")
            found = set(re.findall(r"crate::([a-z_0-9]+)", code))
            for group in re.findall(r"use crate::\{([^}]*)\}", code):
                found |= set(re.findall(r"\b([a-z_0-9]+)\b", group))
            deps.setdefault(module, set()).update(found - {module})
    known = set(deps)
    return {m: d & known for m, d in deps.items()}, sizes


def cycles(deps):
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(deps[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(deps):
        if v not in index:
            visit(v)
    return found


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "agent/src"
    deps, sizes = modules(src)
    bad = False
    for component in cycles(deps):
        bad = True
        print("import cycle: " + " <-> ".join(component))
        for m in component:
            print(f"  {m} -> {', '.join(sorted(deps[m] & set(component)))}")
    for rel, lines in sorted(sizes.items()):
        if lines > LIMIT:
            bad = True
            print(f"{src}/{rel}: {lines} lines of code (tests excluded), over {LIMIT}")
    if not bad:
        print(f"modules: {len(deps)}, no import cycles, no file over {LIMIT} lines of code")
    sys.exit(1 if bad else 0)


main()
