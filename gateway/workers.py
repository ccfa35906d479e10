"""``gateway serve --workers N``: one HTTP and one MLLP port, N serving processes behind them, supervised.

One process is held by its GIL; PostgreSQL takes several writers (``bench/README.md``, issue 14: 86 → 139
→ 154 messages/s with 1, 2, 3 processes on one database). The parent binds the listening sockets (one HTTP
and one MLLP socket a child, all on the same two ports: :func:`bind_listeners`), runs the migrations once,
then starts N children that inherit them; each runs the whole of ``gateway serve`` on its pair (HTTP, MLLP,
its delivery worker, its ingest writers). What makes several processes safe on one store is already there:
advisory locks per stream, ``SKIP LOCKED`` delivery claims, the listening registry.

The children are ``python -m gateway serve …`` again (the parent's own arguments), with the sockets passed
as file descriptors (``pass_fds``) and a hidden ``--worker-child`` flag. A fresh interpreter rather than a
fork: the parent's database engine and threads stay out of the children, each starts exactly as a serve
does, and prometheus_client picks its multiprocess mode from the environment at import. Rather than
``multiprocessing`` spawn: nothing needs pickling, and a child's command line is one an operator can read
in ``ps``.

Each child also inherits two pipes: it writes one byte on *ready* once it serves (a child that exits before
has not started: the parent ends with its exit status), and it watches *lifeline*, whose far end only the
parent holds: when the parent dies, even by SIGKILL, the children see end-of-file and stop gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import multiprocess

from gateway.metrics import MULTIPROC_ENV

logger = logging.getLogger(__name__)

#: The hidden option a child is started with: ``INDEX,HTTP_FD,MLLP_FD,LIFELINE_FD,READY_FD``.
CHILD_FLAG = "--worker-child"
#: Seconds before the first restart of a child that died; doubled at each death in a row, up to the cap.
RESTART_DELAY = 1.0
RESTART_DELAY_CAP = 30.0
#: A child that served this long before dying is restarted after :data:`RESTART_DELAY` again.
STABLE_SECONDS = 60.0
#: Seconds a child has to stop after SIGTERM (MLLP grace 10 s, writers, the delivery worker's 15 s).
STOP_GRACE = 40.0
#: Listen backlogs: uvicorn's default for HTTP, asyncio's for MLLP.
HTTP_BACKLOG = 2048
MLLP_BACKLOG = 100
_TICK = 0.2


@dataclass(frozen=True)
class Inherited:
    """What a child receives from the parent: its index (1..N) and the descriptors it inherits."""

    index: int
    http_fd: int
    mllp_fd: int
    lifeline_fd: int
    ready_fd: int

    def flag(self) -> str:
        return f"{self.index},{self.http_fd},{self.mllp_fd},{self.lifeline_fd},{self.ready_fd}"

    @classmethod
    def parse(cls, value: str) -> Inherited:
        index, http_fd, mllp_fd, lifeline_fd, ready_fd = (int(v) for v in value.split(","))
        return cls(index, http_fd, mllp_fd, lifeline_fd, ready_fd)


def bind_listeners(host: str, port: int, *, count: int, backlog: int) -> list[socket.socket]:
    """``count`` listening sockets on one port (``SO_REUSEPORT``), one a worker, all held by the parent.

    One socket shared by every worker would do, but the kernel wakes every worker on a new connection and
    the first to run takes everything queued (asyncio accepts up to its backlog at a time): a burst of
    connections, such as every sending engine reconnecting after a restart, lands on one worker and stays
    there, MLLP connections being long-lived (measured: 352 of 400 frames on one of 2 workers). With a socket
    a worker, the kernel spreads connections over them by their address hash. The parent keeps them all: a
    connection that comes to the socket of a worker being restarted waits in its backlog, it is not refused.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the others join the one the first was given
            sock.listen(backlog)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@dataclass
class Child:
    """One worker slot: its process of the moment, and what the supervisor knows of it."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    lifeline_fd: int | None = None
    ready: bool = False
    started_at: float = 0.0
    starts: int = 0
    delay: float = 0.0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Starts the children, restarts one that dies (with a back-off), stops them all on SIGTERM or SIGINT.

    ``command`` is the child's command line without the hidden flag; ``env`` its environment.
    """

    command: list[str]
    count: int
    http: list[socket.socket]
    mllp: list[socket.socket]
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)
    stopping: bool = False
    status: int = 0
    _selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    _all_ready_logged: bool = False

    def run(self) -> int:
        """Until a signal (exit 0) or a child that could not start (its exit status)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.children = [Child(index=k) for k in range(1, self.count + 1)]
            for child in self.children:
                self._spawn(child)
            while not self.stopping:
                self._watch()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._selector.close()
        return self.status

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            logger.info("gateway: %s received, stopping %d workers", signal.Signals(signum).name, self.count)
        self.stopping = True

    def _spawn(self, child: Child) -> None:
        lifeline_read, lifeline_write = os.pipe()
        ready_read, ready_write = os.pipe()
        http, mllp = self.http[child.index - 1].fileno(), self.mllp[child.index - 1].fileno()
        inherited = Inherited(child.index, http, mllp, lifeline_read, ready_write)
        fds = (inherited.http_fd, inherited.mllp_fd, lifeline_read, ready_write)
        try:
            # A session of its own: a terminal's Ctrl-C reaches the parent only, which stops the children in order.
            child.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                [*self.command, CHILD_FLAG, inherited.flag()], pass_fds=fds, env=self.env, start_new_session=True
            )
        finally:
            os.close(lifeline_read)
            os.close(ready_write)
        child.ready_fd, child.lifeline_fd = ready_read, lifeline_write
        child.ready, child.started_at, child.restart_at = False, time.monotonic(), None
        child.starts += 1
        self._selector.register(ready_read, selectors.EVENT_READ, child)
        logger.info("gateway: worker %d started (pid %d)", child.index, child.process.pid)

    def _watch(self) -> None:
        for key, _ in self._selector.select(timeout=_TICK):
            child: Child = key.data
            if os.read(key.fd, 1):
                child.ready = True
                logger.info("gateway: worker %d serving (pid %d)", child.index, _pid(child))
            self._close_ready(child)
        if not self._all_ready_logged and all(c.ready for c in self.children):
            self._all_ready_logged = True
            logger.info("gateway: %d workers serving", self.count)
        now = time.monotonic()
        for child in self.children:
            if child.process is not None and (code := child.process.poll()) is not None:
                self._exited(child, code, now)
            elif child.restart_at is not None and now >= child.restart_at and not self.stopping:
                self._spawn(child)

    def _exited(self, child: Child, code: int, now: float) -> None:
        pid = _pid(child)
        self._forget(child)
        _mark_dead(pid, self.env)
        if child.starts == 1 and not child.ready:
            logger.error("gateway: worker %d (pid %d) could not start (exit status %d)", child.index, pid, code)
            self.status = code or 1
            self.stopping = True
            return
        stable = child.ready and now - child.started_at >= STABLE_SECONDS
        child.delay = RESTART_DELAY if stable or not child.delay else min(child.delay * 2, RESTART_DELAY_CAP)
        child.restart_at = now + child.delay
        logger.warning(
            "gateway: worker %d (pid %d) exited with status %d; restarting it in %.0f s",
            child.index,
            pid,
            code,
            child.delay,
        )

    def _close_ready(self, child: Child) -> None:
        if child.ready_fd is not None:
            self._selector.unregister(child.ready_fd)
            os.close(child.ready_fd)
            child.ready_fd = None

    def _forget(self, child: Child) -> None:
        self._close_ready(child)
        if child.lifeline_fd is not None:
            os.close(child.lifeline_fd)
            child.lifeline_fd = None
        child.process = None

    def _stop_all(self) -> None:
        """SIGTERM to every child (each answers what it accepted, as serve does), SIGKILL past the grace."""
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for child in running:
            assert child.process is not None
            try:
                code = child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("gateway: worker %d did not stop in %.0f s; killing it", child.index, STOP_GRACE)
                child.process.kill()
                code = child.process.wait()
            # uvicorn raises the SIGTERM again once it has stopped gracefully: that is a clean stop too.
            if code not in (0, -signal.SIGTERM):
                logger.warning("gateway: worker %d stopped with status %d", child.index, code)
        for child in self.children:
            pid = _pid(child)
            if child.process is not None:
                self._forget(child)
                _mark_dead(pid, self.env)


def _pid(child: Child) -> int:
    return child.process.pid if child.process is not None else 0


def _mark_dead(pid: int, env: dict[str, str]) -> None:
    """prometheus_client's clean-up of a dead process's live gauges (a child killed cannot do its own)."""
    if pid:
        multiprocess.mark_process_dead(pid, env[MULTIPROC_ENV])  # type: ignore[no-untyped-call]


def supervise(*, argv: list[str], http: list[socket.socket], mllp: list[socket.socket]) -> int:
    """The parent's part, once the sockets are bound and the store migrated: a fresh metrics directory, the
    children, and their supervision until a signal; the directory is removed at the end."""
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    env = {**os.environ, MULTIPROC_ENV: metrics_dir}
    command = [sys.executable, "-m", "gateway", *argv]
    try:
        return Supervisor(command=command, count=len(http), http=http, mllp=mllp, env=env).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


class ChildServer(uvicorn.Server):
    """uvicorn's server in a child: says *ready* once it serves, stops when the parent's lifeline ends."""

    def __init__(self, config: uvicorn.Config, *, inherited: Inherited) -> None:
        super().__init__(config)
        self.inherited = inherited

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit:
            return
        asyncio.get_running_loop().add_reader(self.inherited.lifeline_fd, self._parent_gone)
        os.write(self.inherited.ready_fd, b"r")
        os.close(self.inherited.ready_fd)

    def _parent_gone(self) -> None:
        """The lifeline is readable only at its end: the parent is gone, nobody else would stop this worker."""
        asyncio.get_running_loop().remove_reader(self.inherited.lifeline_fd)
        logger.warning("gateway: worker %d: the parent process is gone; stopping", self.inherited.index)
        self.should_exit = True


def serve_child(inherited: Inherited, *, runtime: Any, config: uvicorn.Config) -> int:
    """Serve the inherited HTTP socket until told to stop; 3 (uvicorn's start-up failure) if it never served."""
    http = socket.socket(fileno=inherited.http_fd)
    server = ChildServer(config, inherited=inherited)
    try:
        server.run(sockets=[http])
    finally:
        http.close()
        runtime.close()
    return 0 if server.started else 3
