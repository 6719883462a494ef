#!/usr/bin/env python3
"""`flowplane run` in Python: streams input files through a pipeline and prints each
result as it arrives (one readable line), or with --json the CLI's JSON lines once the
session closed, ending with the summary line.

Usage: run.py MANIFEST NAME=FILE [NAME=FILE ...] [--json]
The service is FLOWPLANE_PIPELINE (default 127.0.0.1:50071); FLOWPLANE_CLIENT_TOKEN_FILE
and FLOWPLANE_TLS_CA are used when set, as the CLI uses them.
"""

from __future__ import annotations

import argparse
import os
import sys

import flowplane
from flowplane.files import read_file
from flowplane.summary import outcome_lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("inputs", nargs="+", metavar="NAME=FILE")
    parser.add_argument("--json", action="store_true", help="print the CLI's JSON lines")
    args = parser.parse_args()
    inputs = {}
    for spec in args.inputs:
        name, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"{spec!r} is not NAME=FILE")
        inputs[name] = read_file(path)
    client = flowplane.Client(
        os.environ.get("FLOWPLANE_PIPELINE", "127.0.0.1:50071"),
        token_file=os.environ.get("FLOWPLANE_CLIENT_TOKEN_FILE"),
        tls_ca=os.environ.get("FLOWPLANE_TLS_CA"),
    )
    with client:
        if args.json:
            # The summary needs the session's closing counts: run it to the end first.
            outcome = client.run(args.manifest, inputs, errors="collect")
            sys.stdout.write(outcome_lines(outcome))
            return 0
        for item in client.stream(args.manifest, inputs):
            if isinstance(item, flowplane.ChunkError):
                print(f"#{item.sequence} error {item}")
            else:
                print(f"#{item.sequence} {item.output} {item.value}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (flowplane.FlowplaneError, ValueError, OSError) as error:
        sys.exit(f"run.py: {error}")
