#!/usr/bin/env python3
"""`flowplane components list` and `watch` in Python: prints the registered components,
or with --watch every change as it happens (until --events changes or Ctrl-C).

Usage: components.py [--kind processor|source|consumer] [--capability NAME] [--watch [--events N]]
The control plane is FLOWPLANE_CONTROL_PLANE (default 127.0.0.1:50051).
"""

from __future__ import annotations

import argparse
import asyncio
import os

import flowplane


def row(c: flowplane.Component) -> str:
    return f"{c.id:<28} {c.kind:<10} {c.status:<10} {c.endpoint:<22} {','.join(c.capabilities)}"


async def watch(registry: flowplane.aio.ControlPlane, args: argparse.Namespace) -> None:
    changes = 0
    async with registry.watch(kind=args.kind, capability=args.capability) as events:
        async for event in events:
            for c in event.components:
                print(f"{event.kind.upper():<9} {row(c)}", flush=True)
            changes += event.kind != "snapshot"
            if args.events is not None and changes >= args.events:
                return


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["processor", "source", "consumer"])
    parser.add_argument("--capability")
    parser.add_argument("--watch", action="store_true")
    parser.add_argument("--events", type=int, help="with --watch: stop after this many changes")
    args = parser.parse_args()
    target = os.environ.get("FLOWPLANE_CONTROL_PLANE", "127.0.0.1:50051")
    async with flowplane.aio.ControlPlane(target) as registry:
        if args.watch:
            await watch(registry, args)
            return
        for c in await registry.components(kind=args.kind, capability=args.capability):
            print(row(c))


if __name__ == "__main__":
    asyncio.run(main())
