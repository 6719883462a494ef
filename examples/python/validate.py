#!/usr/bin/env python3
"""`flowplane validate` in Python: asks the pipeline service whether a manifest would run
and prints every problem. Exits 1 when there are problems.

Usage: validate.py MANIFEST        (service: FLOWPLANE_PIPELINE, default 127.0.0.1:50071)
"""

from __future__ import annotations

import os
import sys

import flowplane


def main(manifest: str) -> int:
    target = os.environ.get("FLOWPLANE_PIPELINE", "127.0.0.1:50071")
    with flowplane.Client(
        target, token_file=os.environ.get("FLOWPLANE_CLIENT_TOKEN_FILE")
    ) as client:
        problems = client.validate(manifest)
    if not problems:
        print(f"{manifest}: valid")
        return 0
    print(f"{manifest}: {len(problems)} problems")
    for p in problems:
        print(f"  {p.code.name} {p.reason} {p.message} ({p.field or p.node or '-'})")
    return 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
