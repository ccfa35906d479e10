"""Parse + map + ACK as the pipeline runs them, no I/O: the driver that callgrind counts for that part alone.

``er7.parse``, the pipeline's header checks, ``read_header``, ``Engine.map``, then the AA's ``build_ack`` and
``encode_ack``, over the sequential bench's A01/A03 (distinct IPP, visit, control and movement ids per stay,
as ``sequential.py``), each message with the clock read as the pipeline reads it.

    .venv/bin/python bench/read_ack.py [--messages 250]
    bench/read_ack.sh [TREE]      callgrind: (Ir(250) - Ir(50)) / 200, the figure of record for this part
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mllp_ingest import stay

from gateway.clock import utcnow
from gateway.hl7 import er7
from gateway.hl7.ack import build_ack, encode_ack
from gateway.mapping.engine import Engine, read_header
from gateway.pipeline import _check_header, _check_key_lengths, _warnings

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=250)
    args = parser.parse_args()
    engine = Engine.from_directory(ROOT / "mappings")
    messages = [m for k in range((args.messages + 1) // 2) for m in stay("0000", k)][: args.messages]
    size = 0
    for raw in messages:
        now = utcnow()
        message = er7.parse(raw)
        _check_header(message)
        header = read_header(message)
        _check_key_lengths(header)
        mapped = engine.map(message, header=header)
        ack = build_ack(message, code="AA", issues=_warnings(mapped), now=now)
        size += len(encode_ack(ack, message.codec))
    print(f"read_ack: {len(messages)} messages, {size} ACK bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
