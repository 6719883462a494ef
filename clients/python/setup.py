"""Build hook: the generated `flowplane.<domain>.v1` modules come from proto/ at build time
(build_proto.py), so a wheel always matches the tree it was built from."""

from __future__ import annotations

import pathlib
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import build_proto


class BuildWithProtos(build_py):
    def run(self) -> None:
        build_proto.generate()
        super().run()


setup(
    packages=["flowplane", *build_proto.generated_packages(build_proto.proto_root())],
    package_dir={"": "src"},
    package_data={"": ["*.pyi", "py.typed"]},
    cmdclass={"build_py": BuildWithProtos},
)
