"""Regenerate the Python modules and type stubs of proto/probenet/v1 from the .proto files.

Usage: python scripts/gen_proto.py [--out DIR]   (default: proto/, in place)

Every .proto gets its message module and stub (`*_pb2.py`, `*_pb2.pyi`); only those that
declare a service get the gRPC module and stub (`*_pb2_grpc.py`, `*_pb2_grpc.pyi`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import sysconfig
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
_SERVICE = re.compile(r"^\s*service\s+\w+", re.MULTILINE)


def _plugin(name: str) -> str:
    scripts = Path(sysconfig.get_path("scripts"))
    found = shutil.which(name, path=str(scripts)) or shutil.which(name)
    if found is None:
        sys.exit(f"gen_proto: {name} not found; install the dev extra (mypy-protobuf)")
    return found


def _protoc(*args: str) -> None:
    if protoc.main(["protoc", *args]) != 0:
        sys.exit("gen_proto: protoc failed")


def generate(out_dir: Path) -> None:
    """Run protoc over every .proto under proto/, writing modules and stubs to out_dir."""
    paths = sorted(PROTO_ROOT.rglob("*.proto"))
    protos = [str(p.relative_to(PROTO_ROOT)) for p in paths]
    services = [str(p.relative_to(PROTO_ROOT)) for p in paths
                if _SERVICE.search(p.read_text(encoding="utf-8"))]
    includes = (f"-I{PROTO_ROOT}", f"-I{resources.files('grpc_tools') / '_proto'}")
    _protoc(*includes, f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--python_out={out_dir}", f"--mypy_out={out_dir}", *protos)
    if services:
        _protoc(*includes, f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
                f"--grpc_python_out={out_dir}", f"--mypy_grpc_out={out_dir}", *services)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
