"""Generate the atoll.v1 Python stubs (``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py``).

    python -m atoll.proto.gen            # rewrite proto/v1/*_pb2*.py(i)
    python -m atoll.proto.gen --check    # exit 1 when the committed stubs are stale

The sources import each other as ``atoll/proto/v1/x.proto`` so that the generated code imports
``atoll.proto.v1.x_pb2``; the script stages them under that path in a temporary directory.
Uses grpcio-tools (the version pinned in pyproject's test extra).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Generate stubs for every proto/v1/*.proto into ``out_dir``; return the written files."""
    # grpcio-tools is a development dependency (the test extra): only generating stubs needs it.
    import grpc_tools
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "src" / "atoll" / "proto" / "v1"
        stage.mkdir(parents=True)
        protos = sorted(SRC.glob("*.proto"))
        for p in protos:
            shutil.copy(p, stage / p.name)
        gen = Path(tmp) / "gen"
        gen.mkdir()
        include = Path(grpc_tools.__file__).parent / "_proto"
        args = ["grpc_tools.protoc", f"-I{Path(tmp) / 'src'}", f"-I{include}",
                f"--python_out={gen}", f"--pyi_out={gen}", f"--grpc_python_out={gen}"]
        args += [f"atoll/proto/v1/{p.name}" for p in protos]
        rc = protoc.main(args)
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for f in sorted((gen / "atoll" / "proto" / "v1").iterdir()):
            if f.name.endswith(GENERATED_SUFFIXES):
                dest = out_dir / f.name
                shutil.copy(f, dest)
                written.append(dest)
        return written


def stale_files() -> list[str]:
    """Names of stubs that differ from a fresh generation (missing and extra included)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_bytes() for p in generate(Path(tmp))}
    committed = {p.name: p.read_bytes() for p in SRC.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
    return sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m atoll.proto.gen", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only report stale stubs (exit 1 if any)")
    ns = ap.parse_args(argv)
    if ns.check:
        stale = stale_files()
        if stale:
            print("stale generated stubs: " + ", ".join(stale) + " -- run: python -m atoll.proto.gen")
            return 1
        print("generated stubs are up to date")
        return 0
    for f in SRC.iterdir():
        if f.name.endswith(GENERATED_SUFFIXES):
            f.unlink()
    for p in generate(SRC):
        print(f"wrote {p.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
