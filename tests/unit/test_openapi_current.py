"""``openapi/openapi.json`` is kept current with the code (regenerate: ``gateway openapi -o openapi/openapi.json``)."""

import json
from pathlib import Path

from gateway.cli import main

ROOT = Path(__file__).resolve().parent.parent.parent


def test_committed_openapi_matches_the_app(tmp_path: Path) -> None:
    out = tmp_path / "openapi.json"
    assert main(["openapi", "-o", str(out)]) == 0
    committed = json.loads((ROOT / "openapi" / "openapi.json").read_text(encoding="utf-8"))
    assert json.loads(out.read_text(encoding="utf-8")) == committed, "run: gateway openapi -o openapi/openapi.json"
