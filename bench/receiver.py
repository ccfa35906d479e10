"""The platform's end of the delivery benches: a webhook receiver that times every event, verifies every
signature, and counts duplicates and order breaks.

It runs either in the bench's own process (:class:`TimingReceiver`, as earlier runs did) or, by default for
the sustained run, in a process of its own (:class:`ReceiverProcess`): an e-parcours platform is another
system, and in the bench's process its uvicorn, JSON parsing and HMAC checks took the same interpreter lock
as the gateway's writer. Both record arrival times with ``time.perf_counter()`` (``CLOCK_MONOTONIC`` on
Linux, one clock for every process), so an arrival compares with the send time the bench took.

    .venv/bin/python bench/receiver.py --port P      # what ReceiverProcess starts
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from fastapi import Request, Response

from gateway.demo import Receiver, free_port
from gateway.subscriptions.channels import SIGNATURE_HEADER, verify

ROOT = Path(__file__).resolve().parent.parent
#: seconds between two looks at a receiver process's counts while waiting on it
POLL = 0.05
#: how long a receiver process may take to answer its first request
START_SECONDS = 30.0


class TimingReceiver(Receiver):
    """Records when each event number first arrives, duplicates, order breaks and bad signatures."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[int, float] = {}
        #: ``Encounter/<id>`` → first arrival, to tie an event to the message that caused it (several
        #: connections commit in any order, so event numbers do not follow the send order)
        self.by_focus: dict[str, float] = {}
        self.order: list[int] = []
        self.requests = 0
        self.duplicates = 0
        self.unsigned = 0
        self.handshake = asyncio.Event()
        self.target = 0
        self.all_in = asyncio.Event()
        self.app.post("/bench/secret")(self._secret)
        self.app.get("/bench/state")(self._state)

    async def _notify(self, request: Request) -> Response:
        body = await request.body()
        now = time.perf_counter()
        bundle = orjson.loads(body)
        params = bundle["entry"][0]["resource"]["parameter"]
        sub_id = params[0]["valueReference"]["reference"].rsplit("/", 1)[-1]
        if not verify(body, self.secrets.get(sub_id, ""), request.headers.get(SIGNATURE_HEADER, "")):
            self.unsigned += 1
        kind = next(p["valueCode"] for p in params if p["name"] == "type")
        if kind == "handshake":
            self.handshake.set()
            return Response(status_code=200)
        self.requests += 1
        for event in (p for p in params if p["name"] == "notification-event"):
            number = int(next(part["valueString"] for part in event["part"] if part["name"] == "event-number"))
            if number in self.arrived:
                self.duplicates += 1
                continue
            self.arrived[number] = now
            self.order.append(number)
            focus = next((part["valueReference"]["reference"] for part in event["part"] if part["name"] == "focus"), "")
            if focus:
                self.by_focus.setdefault("/".join(focus.rsplit("/", 2)[-2:]), now)
        if len(self.arrived) >= self.target:
            self.all_in.set()
        return Response(status_code=200)

    # -- the same interface in this process and across processes (ReceiverProcess) ---------------------

    def expect(self, total: int) -> None:
        self.target = total
        self.all_in.clear()
        if len(self.arrived) >= total:
            self.all_in.set()

    async def set_secret(self, sub_id: str, secret: str) -> None:
        self.secrets[sub_id] = secret

    async def wait_handshake(self) -> None:
        await self.handshake.wait()

    async def wait_all(self) -> None:
        """Until ``expect``'s total has arrived (callers bound it with ``asyncio.timeout``)."""
        await self.all_in.wait()

    async def count(self) -> int:
        return len(self.arrived)

    async def refresh(self) -> None:
        """Nothing to fetch: the figures are this object's own."""

    # -- what a receiver process answers ----------------------------------------------------------------

    async def _secret(self, request: Request) -> Response:
        given = orjson.loads(await request.body())
        self.secrets[str(given["id"])] = str(given["secret"])
        return Response(status_code=204)

    async def _state(self, full: bool = False) -> Response:
        state: dict[str, Any] = {"handshake": self.handshake.is_set(), "received": len(self.arrived)}
        if full:
            state |= {
                "arrived": self.arrived,
                "by_focus": self.by_focus,
                "order": self.order,
                "requests": self.requests,
                "duplicates": self.duplicates,
                "unsigned": self.unsigned,
            }
        return Response(orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS), media_type="application/json")


class ReceiverProcess:
    """:class:`TimingReceiver` in a process of its own, read over HTTP; same attributes once refreshed."""

    def __init__(self) -> None:
        self.port = free_port(None)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--port", str(self.port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
        )
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        self.arrived: dict[int, float] = {}
        self.by_focus: dict[str, float] = {}
        self.order: list[int] = []
        self.requests = self.duplicates = self.unsigned = 0
        self.target = 0

    async def started(self) -> None:
        deadline = time.perf_counter() + START_SECONDS
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the receiver process exited ({self.proc.returncode})")
            try:
                await self.http.get("/bench/state")
                return
            except httpx.TransportError:
                if time.perf_counter() > deadline:
                    raise
                await asyncio.sleep(POLL)

    def expect(self, total: int) -> None:
        self.target = total

    async def set_secret(self, sub_id: str, secret: str) -> None:
        answer = await self.http.post("/bench/secret", content=orjson.dumps({"id": sub_id, "secret": secret}))
        answer.raise_for_status()

    async def _state(self, *, full: bool = False) -> dict[str, Any]:
        answer = await self.http.get("/bench/state", params={"full": "true"} if full else None)
        answer.raise_for_status()
        state: dict[str, Any] = orjson.loads(answer.content)
        return state

    async def wait_handshake(self) -> None:
        await self._until(lambda s: bool(s["handshake"]))

    async def wait_all(self) -> None:
        await self._until(lambda s: int(s["received"]) >= self.target)
        await self.refresh()

    async def _until(self, done: Any) -> None:
        # another process's state: no Event to wait on, so look again every POLL seconds
        while not done(await self._state()):  # noqa: ASYNC110
            await asyncio.sleep(POLL)

    async def count(self) -> int:
        return int((await self._state())["received"])

    async def refresh(self) -> None:
        """Fetch the figures (arrival times, order, counts) into this object's attributes."""
        state = await self._state(full=True)
        self.arrived = {int(k): float(v) for k, v in state["arrived"].items()}
        self.by_focus = {str(k): float(v) for k, v in state["by_focus"].items()}
        self.order = [int(n) for n in state["order"]]
        self.requests, self.duplicates, self.unsigned = state["requests"], state["duplicates"], state["unsigned"]

    async def close(self) -> None:
        await self.http.aclose()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    receiver = TimingReceiver()
    uvicorn.run(receiver.app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
