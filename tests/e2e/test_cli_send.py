"""``gateway send`` against a real MLLP listener: the ACKs, the summary, and the exit status."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway import cli
from gateway.config import Settings
from gateway.runtime import Runtime
from tests.messages import Adt

pytestmark = pytest.mark.e2e


def test_send_prints_acks_and_a_summary_and_exits_1_after_an_ae(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "1_good.hl7", tmp_path / "2_bad.hl7"
    good.write_bytes(Adt(control_id="S-1").bytes())
    bad.write_bytes(Adt(control_id="S-1", family="OTHER").bytes())  # MSH-10 reused with other content: AE

    async def scenario() -> tuple[int, int]:
        runtime = Runtime.build(settings)
        await runtime.start(worker=False)
        try:
            assert runtime.mllp is not None
            port = str(runtime.mllp.port)
            first = await asyncio.to_thread(cli.main, ["send", "--port", port, str(good)])
            both = await asyncio.to_thread(cli.main, ["send", "--port", port, str(tmp_path)])
            return first, both
        finally:
            await runtime.stop()
            runtime.close()

    first, both = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    out, err = capsys.readouterr()
    assert (first, both) == (0, 1)
    assert f"--- {good}" in out and "MSA|AA|S-1" in out and "MSA|AE|S-1" in out
    assert "sent to 127.0.0.1" in err and "1 of 1" in err and "2 of 2" in err and "AA=" in err and "AE=1" in err
