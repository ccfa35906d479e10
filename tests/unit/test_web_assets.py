"""The pages' assets are packaged with the gateway and none of ours loads anything from another host."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
WEB = ROOT / "gateway" / "web"
#: src=/href= or fetch() pointing outside the gateway.
EXTERNAL = re.compile(
    r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|fetch\(\s*["'`](?:https?:)?//|@import\s+url\(\s*["']?https?:"""
)


def test_every_template_and_static_file_is_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gateway"]
    files = [p for p in WEB.rglob("*") if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts]
    assert files
    for path in files:
        relative = path.relative_to(ROOT / "gateway").as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


def test_our_pages_load_nothing_from_another_host() -> None:
    ours = [*WEB.glob("templates/*.html"), *WEB.glob("static/*.js"), *WEB.glob("static/*.css")]
    assert ours
    for path in ours:
        assert not EXTERNAL.search(path.read_text(encoding="utf-8")), path.name
