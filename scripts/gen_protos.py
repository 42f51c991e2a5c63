"""Generate the Python gRPC code for protos/ into feedcore/proto/ (run by `make protos`).

The generated modules are committed and never edited by hand; tests/serving/test_protos.py fails
when they are stale. Imports resolve as `feedcore.proto.feed.v1.feed_pb2`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

from feedcore.io import atomic_path

REPO = Path(__file__).resolve().parents[1]
PROTOS = REPO / "protos"
PACKAGE = "feedcore/proto"


def generate(out_root: Path) -> list[Path]:
    """Generate into `out_root`/feedcore/proto and return the written files."""
    sources = sorted(PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PACKAGE}={PROTOS}", f"-I{include}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}"]
    args += [f"{PACKAGE}/{s.relative_to(PROTOS)}" for s in sources]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted((out_root / PACKAGE).rglob("*.py*"))
    for directory in {p.parent for p in written} | {out_root / PACKAGE}:
        d = directory
        while d != out_root / "feedcore":
            (d / "__init__.py").touch()
            d = d.parent
    return sorted((out_root / PACKAGE).rglob("*.py*"))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        target = REPO / PACKAGE
        with atomic_path(target) as staged:  # never a half-written package
            shutil.copytree(Path(tmp) / PACKAGE, staged)
    print(f"generated {sorted(str(p.relative_to(REPO)) for p in target.rglob('*.py*'))}", file=sys.stderr)


if __name__ == "__main__":
    main()
