"""Pure CPU cost per message: the gateway's ER7 parser and mapping engine, beside hl7apy and python-hl7.

No I/O, one thread. Every parser starts from the same raw bytes (the demo fixtures, ISO 8859-15) and
decodes them inside the timed call, since the gateway's ``er7.parse`` does too.

    .venv/bin/python bench/parse_map.py [--seconds 0.2] [--repeat 3]

Figures are the best of ``--repeat`` runs of at least ``--seconds`` each (timeit's autorange).
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

import hl7
from hl7apy.parser import parse_message

from gateway.hl7 import er7
from gateway.mapping.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "demo"
MAPPINGS = ROOT / "mappings"
CODEC = "iso-8859-15"  # MSH-18 8859/15 in the fixtures


def measure(fn: Callable[[], object], *, seconds: float, repeat: int) -> float:
    """Best time per call, in seconds."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(number, int(number * seconds / 0.2))
    return min(timer.repeat(repeat=repeat, number=number)) / number


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=0.2, help="minimum duration of one run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the best is kept)")
    args = parser.parse_args()

    engine = Engine.from_directory(MAPPINGS)
    print(f"parse_map: µs per message, best of {args.repeat} (CPython {sys.version.split()[0]})")
    print(f"  {'message':<22} {'step':<32} {'µs/msg':>9} {'msgs/s':>9}")
    for path in sorted(FIXTURES.glob("*.hl7")):
        raw = path.read_bytes()
        parsed = er7.parse(raw)
        engine.map(parsed)  # fail here, not inside the timings, if the fixture does not map

        def er7_parse(raw: bytes = raw) -> object:
            return er7.parse(raw)

        def engine_map(parsed: er7.Message = parsed) -> object:
            return engine.map(parsed)

        def parse_and_map(raw: bytes = raw) -> object:
            return engine.map(er7.parse(raw))

        def hl7apy_flat(raw: bytes = raw) -> object:
            return parse_message(raw.decode(CODEC), find_groups=False)

        def hl7apy_groups(raw: bytes = raw) -> object:
            return parse_message(raw.decode(CODEC))

        def python_hl7(raw: bytes = raw) -> object:
            return hl7.parse(raw.decode(CODEC))

        steps: list[tuple[str, Callable[[], object]]] = [
            ("gateway er7.parse", er7_parse),
            ("gateway engine.map", engine_map),
            ("gateway er7.parse + engine.map", parse_and_map),
            ("hl7apy parse (find_groups=False)", hl7apy_flat),
            ("hl7apy parse (find_groups=True)", hl7apy_groups),
            ("python-hl7 hl7.parse", python_hl7),
        ]
        for name, fn in steps:
            per_call = measure(fn, seconds=args.seconds, repeat=args.repeat)
            print(f"  {path.name:<22} {name:<32} {per_call * 1e6:>9.1f} {1 / per_call:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
