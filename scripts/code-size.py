#!/usr/bin/env python3
"""Sizes the tree the way issue reviews count it: lines per crate (src/ only,
in-file `#[cfg(test)]` modules excluded), the largest files and the longest
functions. Usage: python3 scripts/code-size.py [--files N] [--fns N]

Function length is found by brace matching from each `fn` line, which is
exact for rustfmt-formatted code (strings with unbalanced braces are rare
and would only lengthen one count)."""
import argparse
import os
import re

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")


def src_lines(path):
    """Lines of a file up to its in-file test module (`#[cfg(test)] mod x {`;
    a `mod x;` declaration is not a cut)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(r"\s*(pub(\([^)]*\))?\s+)?mod \w+\s*\{", lines[i + 1]):
            return lines[:i]
    return lines


def functions(lines):
    out = []
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        depth, started = 0, False
        for j in range(i, len(lines)):
            code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j].split("//")[0])
            if not started and ";" in code and "{" not in code:
                break  # a declaration without a body
            depth += code.count("{") - code.count("}")
            started = started or "{" in code
            if started and depth <= 0:
                out.append((j - i + 1, m.group(7), i + 1))
                break
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=15)
    ap.add_argument("--fns", type=int, default=15)
    a = ap.parse_args()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    crates, files, fns = {}, [], []
    for base in ["crates"]:
        for dirpath, _, names in os.walk(os.path.join(root, base)):
            rel = os.path.relpath(dirpath, root)
            parts = rel.split(os.sep)
            if len(parts) < 3 or parts[2] != "src":
                continue
            for n in names:
                if not n.endswith(".rs") or n == "tests.rs" or "/tests" in rel:
                    continue
                p = os.path.join(dirpath, n)
                lines = src_lines(p)
                relp = os.path.relpath(p, root)
                crates[parts[1]] = crates.get(parts[1], 0) + len(lines)
                files.append((len(lines), relp))
                fns += [(n_, f"{relp}:{line} {name}") for n_, name, line in functions(lines)]
    print("lines per crate (src, without in-file tests):")
    for c, n in sorted(crates.items(), key=lambda x: -x[1]):
        print(f"  {n:6} {c}")
    print(f"  {sum(crates.values()):6} total")
    print(f"largest files:")
    for n, p in sorted(files, reverse=True)[: a.files]:
        print(f"  {n:6} {p}")
    print(f"longest functions:")
    for n, p in sorted(fns, reverse=True)[: a.fns]:
        print(f"  {n:6} {p}")
    print(f"files over 800 lines: {sum(1 for n, _ in files if n > 800)}; functions over 120 lines: {sum(1 for n, _ in fns if n > 120)}")


main()
