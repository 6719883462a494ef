"""Build hook: the generated `flowplane.<domain>.v1` modules come from proto/ at build time
(build_proto.py), so a wheel always matches the tree it was built from. They are made
before setup() because setuptools checks every package directory exists when it first
reads the metadata, before any build command runs."""

from __future__ import annotations

import pathlib
import sys

from setuptools import setup

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import build_proto

setup(
    packages=["flowplane", *build_proto.generate()],
    package_dir={"": "src"},
    package_data={"": ["*.pyi", "py.typed"]},
)
