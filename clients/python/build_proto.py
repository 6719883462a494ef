"""Generates the `flowplane.<domain>.v1` message and gRPC modules, with typed stubs, from
the repository's proto/ tree into src/flowplane/. The package build hook (setup.py) and
`make python-client` both run it; its output is git-ignored and never edited by hand.
It must work offline: grpc_tools bundles protoc and the well-known types.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import sysconfig

HERE = pathlib.Path(__file__).resolve().parent
PACKAGE_DIR = HERE / "src" / "flowplane"


def proto_root() -> pathlib.Path:
    """The proto/ tree: FLOWPLANE_PROTO_DIR, else the repository this package sits in."""
    configured = os.environ.get("FLOWPLANE_PROTO_DIR")
    root = pathlib.Path(configured) if configured else HERE.parent.parent / "proto"
    if not (root / "flowplane").is_dir():
        raise SystemExit(
            f"flowplane client build: no proto tree at {root}: build from a flowplane "
            "checkout (clients/python inside the repository) or set FLOWPLANE_PROTO_DIR"
        )
    return root


def proto_files(root: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "flowplane").rglob("*.proto"))


def generated_packages(root: pathlib.Path) -> list[str]:
    """Python packages the proto tree turns into, e.g. `flowplane.streaming.v1`."""
    packages = set()
    for name in proto_files(root):
        parts = pathlib.PurePosixPath(name).parent.parts
        for depth in range(2, len(parts) + 1):
            packages.add(".".join(parts[:depth]))
    return sorted(packages)


def plugin(name: str) -> str:
    """A protoc plugin installed beside this interpreter (mypy-protobuf's)."""
    for directory in (sysconfig.get_path("scripts"), str(pathlib.Path(sys.executable).parent)):
        candidate = pathlib.Path(directory) / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"flowplane client build: {name} not found: install mypy-protobuf")
    return found


def generate(out: pathlib.Path = PACKAGE_DIR) -> list[str]:
    from grpc_tools import protoc  # build-time dependency only

    root = proto_root()
    files = proto_files(root)
    for package in generated_packages(root):
        directory = out.joinpath(*package.split(".")[1:])
        if directory.exists():
            shutil.rmtree(directory)
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={root}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out.parent}",
        f"--grpc_python_out={out.parent}",
        f"--mypy_out={out.parent}",
        f"--mypy_grpc_out={out.parent}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("flowplane client build: grpc_tools.protoc failed on " + ", ".join(files))
    packages = generated_packages(root)
    for package in packages:
        init = out.joinpath(*package.split(".")[1:], "__init__.py")
        init.write_text('"""Generated from proto/ by build_proto.py; do not edit."""\n')
    return packages


if __name__ == "__main__":
    for generated in generate():
        print(f"generated {generated}")
