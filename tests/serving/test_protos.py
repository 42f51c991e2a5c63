"""The generated gRPC code is exactly what scripts/gen_protos.py makes from protos/."""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    gen = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = gen
    spec.loader.exec_module(gen)
    gen.generate(tmp_path)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in _sources(tmp_path / "feedcore" / "proto")}
    committed = {p.relative_to(REPO): p.read_bytes() for p in _sources(REPO / "feedcore" / "proto")}
    assert fresh.keys() == committed.keys()
    stale = [str(p) for p in fresh if fresh[p] != committed[p]]
    assert not stale, f"regenerate with `make protos`: {stale}"


def _sources(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.suffix in (".py", ".pyi")]
