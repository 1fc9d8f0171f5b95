#!/usr/bin/env python3
"""Checks docs/openapi.yaml against the code.

1. Validates the document with openapi-spec-validator (OpenAPI 3.1).
2. Checks that every `.route("...")` of server/src/lib.rs is a path of the
   document, with every HTTP method the route registers, and that the
   document has no path the router lacks.
3. Checks that the ErrorCode enum lists exactly the codes of
   protocol/src/protocol.rs (`pub mod codes`).

Exits non-zero on any problem. Needs `pip install openapi-spec-validator`.
Run from anywhere: python3 tests/check_openapi.py
"""

import re
import sys
from pathlib import Path

import yaml
from openapi_spec_validator import validate

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "openapi.yaml"
ROUTER = ROOT / "server" / "src" / "lib.rs"
PROTOCOL = ROOT / "protocol" / "src" / "protocol.rs"

METHODS = ("get", "post", "put", "delete", "patch", "head", "options")


def router_routes(source: str) -> dict[str, set[str]]:
    """Path -> methods of every `.route(path, method_router)` call."""
    routes: dict[str, set[str]] = {}
    for m in re.finditer(r"\.route\(", source):
        # The call's arguments, up to the matching parenthesis.
        depth, i = 1, m.end()
        while depth and i < len(source):
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            i += 1
        args = source[m.end() : i - 1]
        path = re.match(r'\s*"([^"]+)"', args)
        if not path:
            raise SystemExit(f"cannot read the path of a route call: {args[:80]!r}")
        methods = set(re.findall(r"(?<![\w:])\.?(" + "|".join(METHODS) + r")\(", args))
        routes.setdefault(path.group(1), set()).update(methods)
    return routes


def error_codes(source: str) -> set[str]:
    block = re.search(r"pub mod codes \{(.*?)\n\}", source, re.S)
    if not block:
        raise SystemExit("cannot find `pub mod codes` in protocol/src/protocol.rs")
    return set(re.findall(r'pub const \w+: &str = "([^"]+)";', block.group(1)))


def main() -> int:
    problems = []
    spec = yaml.safe_load(SPEC.read_text())
    try:
        validate(spec)
    except Exception as e:  # the validator raises several error types
        problems.append(f"{SPEC.relative_to(ROOT)} is not a valid OpenAPI document: {e}")

    routes = router_routes(ROUTER.read_text())
    if not routes:
        problems.append("no .route(...) calls found in server/src/lib.rs")
    paths = spec.get("paths") or {}
    for path, methods in sorted(routes.items()):
        if path not in paths:
            problems.append(f"route {path} ({', '.join(sorted(methods))}) is missing from the OpenAPI paths")
            continue
        for method in sorted(methods):
            if method not in paths[path]:
                problems.append(f"route {method.upper()} {path} is missing from the OpenAPI document")
    for path in sorted(set(paths) - set(routes)):
        problems.append(f"OpenAPI path {path} is not a route of server/src/lib.rs")

    documented = set(spec["components"]["schemas"]["ErrorCode"]["enum"])
    codes = error_codes(PROTOCOL.read_text())
    for code in sorted(codes - documented):
        problems.append(f"error code {code!r} of protocol/src/protocol.rs is missing from ErrorCode")
    for code in sorted(documented - codes):
        problems.append(f"ErrorCode lists {code!r}, which protocol/src/protocol.rs does not define")

    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    if problems:
        return 1
    n = sum(len(m) for m in routes.values())
    print(f"ok: {SPEC.relative_to(ROOT)} is valid; {len(routes)} paths / {n} operations of the router documented; {len(codes)} error codes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
