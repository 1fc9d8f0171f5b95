#!/usr/bin/env python3
"""Parse-check Swift files with tree-sitter-swift; exit 1 on any ERROR/MISSING node.

Used by scripts/kotlin-test.sh on the UniFFI-generated Swift and the ios/
package, since no Swift compiler is available on the development machines.

Usage: scripts/swift_parse_check.py [--strict] FILE.swift [...]
Needs: pip install -r scripts/requirements-swiftcheck.txt  (tree-sitter 0.26.1, tree-sitter-swift 0.7.4)
"""
import re
import sys

import tree_sitter_swift
from tree_sitter import Language, Parser

SWIFT = Language(tree_sitter_swift.language())
parser = Parser(SWIFT)


def problems(tree, src: bytes, limit: int = 10000):
    out = []
    stack = [tree.root_node]
    while stack and len(out) < limit:
        node = stack.pop()
        if node.is_error or node.is_missing:
            row, col = node.start_point
            line = src.splitlines()[row].decode("utf-8", "replace") if row < len(src.splitlines()) else ""
            kind = "MISSING " + node.type if node.is_missing else "ERROR"
            out.append(f"{row + 1}:{col + 1}: {kind}: {line.strip()[:120]}")
            continue  # children of an ERROR node are noise
        if node.has_error:
            stack.extend(reversed(node.children))
    return out


# Valid Swift that tree-sitter-swift (<= 0.7.4) cannot parse. Each rewrite keeps the
# line count, so reported positions still match the original file.
#  1. an attribute alone inside `#if swift(>=5.8) ... #endif` before a declaration
#     (uniffi emits `@_documentation(visibility: private)` this way): drop the
#     #if/#endif lines, keep the attribute (which the grammar parses fine).
#  2. the empty-tuple closure `{ () }` (uniffi: `let writeReturn = { () }`):
#     rewrite as the equivalent `{ Void() }`.
IF_ATTR = re.compile(rb"^([ \t]*#if swift\([^)]*\)[ \t]*)\n([ \t]*@[A-Za-z_][^\n]*)\n([ \t]*#endif[ \t]*)$", re.M)
EMPTY_TUPLE_CLOSURE = re.compile(rb"\{ \(\) \}")


def normalize(src: bytes):
    n1 = len(IF_ATTR.findall(src))
    src = IF_ATTR.sub(lambda m: b"\n" + m.group(2) + b"\n", src)
    n2 = len(EMPTY_TUPLE_CLOSURE.findall(src))
    src = EMPTY_TUPLE_CLOSURE.sub(b"{ Void() }", src)
    return src, n1, n2


def main(paths):
    if not paths:
        print(__doc__)
        return 2
    bad = 0
    for p in paths:
        raw = open(p, "rb").read()
        raw_errs = problems(parser.parse(raw), raw)
        src, n1, n2 = (raw, 0, 0) if STRICT else normalize(raw)
        if src != raw:
            print(f"note {p}: raw parse has {len(raw_errs)} ERROR/MISSING node(s); rewrote "
                  f"{n1} '#if swift(..) @attr #endif' and {n2} '{{ () }}' grammar false positive(s)")
        tree = parser.parse(src)
        errs = problems(tree, src)
        n_nodes = tree.root_node.descendant_count
        if errs:
            bad += 1
            print(f"FAIL {p}: {len(errs)}+ problem(s)")
            for e in errs:
                print("   ", e)
        else:
            print(f"OK   {p}: {len(src.splitlines())} lines, {n_nodes} nodes, no ERROR/MISSING")
    return 1 if bad else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    STRICT = "--strict" in args  # no rewrites: report the grammar's raw verdict
    sys.exit(main([a for a in args if a != "--strict"]))
