#!/usr/bin/env python3
"""Checks the floors of the sandkasten crate (ARCHITECTURE.md): no module imports one on a higher floor, and
the top-level modules form no import circle.

Reads every `crate::...` path in src/ (in `use` statements, braces included, and inline paths; comments and
string literals are skipped), resolves names re-exported at the crate root (`crate::Policy` is `policy`), and
maps each file to its top-level module. Also checks that the VMM crate (vmm/) never names sandkasten.

    scripts/check-layers.py            # prints the floors and any violation; exit 1 on a violation
    scripts/check-layers.py --graph    # also prints every edge between top-level modules, with counts

Exit status: 0 clean, 1 violations, 2 a module that has no floor (add it to FLOORS below).
"""
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

# Lowest first. A module may import its own floor and the floors below it, never a higher one.
FLOORS = [
    ("description", ["policy", "outcome", "error", "backend"]),
    ("backends and protocol", ["namespace", "protocol", "image"]),
    ("VM host side", ["vm"]),
    ("selection and the running sandbox", ["probe", "command", "running", "session"]),
    ("the guest agent and fuzzing entry points", ["guest", "fuzzing"]),
]
FLOOR_OF = {m: i for i, (_, mods) in enumerate(FLOORS) for m in mods}

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def strip_comments_and_strings(text):
    """Blanks out comments, string and char literals (keeps line structure)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not text[i - 1].isalnum()):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""')
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            i += len(re.match(r"'(\\.[^']*|[^\\'])'", text[i:]).group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def module_of(path):
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts.pop()
    if parts in (["lib"], ["bin", *parts[1:]]) or parts[0] == "bin":
        return None
    return parts[0] if parts else None


def root_reexports(lib_text):
    """`pub use a::{X, Y}` / `pub use a::b::X` at the crate root: name -> top-level module."""
    names = {}
    for m in re.finditer(r"pub use\s+([a-z_]+)::([^;]+);", lib_text):
        top, rest = m.group(1), m.group(2)
        for name in re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*::)", rest):
            if name not in ("as", "self"):
                names[name] = top
    return names


def use_targets(tree):
    """First path segments of a `use crate::...` tree: `{a::b, c, d::{e}}` -> [a, c, d]."""
    tree = tree.strip()
    if not tree.startswith("{"):
        return [re.match(r"[A-Za-z_][A-Za-z0-9_]*", tree).group(0)]
    depth, cur, out = 0, "", []
    for ch in tree[1:-1]:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    firsts = []
    for item in out:
        item = item.strip()
        if item:
            firsts.extend(use_targets(item) if item.startswith("{") else [re.match(r"[A-Za-z_][A-Za-z0-9_]*", item).group(0)])
    return firsts


def main():
    lib_text = strip_comments_and_strings((SRC / "lib.rs").read_text())
    reexports = root_reexports(lib_text)
    declared = set(re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_]+)\s*;", lib_text, re.M))
    edges = defaultdict(Counter)
    unknown = set()
    for path in sorted(SRC.rglob("*.rs")):
        src_mod = module_of(path)
        if src_mod is None:
            continue
        text = strip_comments_and_strings(path.read_text())
        targets = []
        for m in re.finditer(r"\buse\s+crate::([^;]+);", text):
            targets.extend(use_targets(m.group(1)))
        for m in re.finditer(r"(?<!use )\bcrate::([A-Za-z_][A-Za-z0-9_]*)", text):
            targets.append(m.group(1))
        for t in targets:
            top = t if t in declared else reexports.get(t)
            if top is None or top == src_mod:
                continue
            edges[src_mod][top] += 1
            for mod in (src_mod, top):
                if mod not in FLOOR_OF:
                    unknown.add(mod)

    print("floors, lowest first:")
    for i, (name, mods) in enumerate(FLOORS):
        print(f"  {i} {name}: {', '.join(mods)}")
    if "--graph" in sys.argv:
        for a in sorted(edges):
            print(f"  {a} -> " + ", ".join(f"{b} ({n})" for b, n in sorted(edges[a].items())))
    if unknown:
        print(f"modules without a floor: {', '.join(sorted(unknown))} (add them to FLOORS)")
        return 2

    bad = []
    for a in sorted(edges):
        for b, n in sorted(edges[a].items()):
            if FLOOR_OF[b] > FLOOR_OF[a]:
                bad.append(f"upward import: {a} (floor {FLOOR_OF[a]}) -> {b} (floor {FLOOR_OF[b]}), {n} path(s)")

    # Circles among top-level modules (same-floor imports are allowed, circles are not).
    state, stack = {}, []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(edges.get(v, {})):
            if state.get(w) == 1:
                bad.append("import circle: " + " -> ".join(stack[stack.index(w):] + [w]))
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(edges):
        if v not in state:
            visit(v)

    vmm = ROOT / "vmm" / "src"
    if vmm.is_dir():
        for path in sorted(vmm.rglob("*.rs")):
            if re.search(r"\bsandkasten::", strip_comments_and_strings(path.read_text())):
                bad.append(f"the VMM crate names sandkasten: {path.relative_to(ROOT)}")

    for line in bad:
        print(line)
    print(f"{len(bad)} violation(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
