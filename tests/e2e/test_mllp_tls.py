"""#13: MLLP over TLS with client certificates mapped to senders, on a real socket with certificates made
in the test (trustme): a sender's own facility gets AA, another facility AR (kept), an unregistered
certificate AR, and a client without a certificate is refused by the handshake."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme

from gateway.auth.clients import add_client
from gateway.config import Settings
from gateway.db.engine import transaction
from gateway.db.repo import MessageRepo
from gateway.hl7.mllp import MLLPClient
from gateway.runtime import Runtime
from tests.messages import Adt

pytestmark = pytest.mark.e2e


def _ack_code(ack: bytes) -> str:
    msa = next(seg for seg in ack.split(b"\r") if seg.startswith(b"MSA"))
    return msa.split(b"|")[1].decode()


def test_mllp_tls_binds_client_certificates_to_sender_facilities(settings: Settings, tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(str(tmp_path / "server.pem"), append=True)
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = settings.model_copy(
        update={
            "mllp_tls_cert": tmp_path / "server.pem",
            "mllp_tls_key": tmp_path / "server.key",
            "mllp_tls_client_ca": tmp_path / "ca.pem",
        }
    )
    runtime = Runtime.build(tls, run_migrations=False)
    with transaction(runtime.db) as conn:
        add_client(conn, kind="sender", name="chu-tls", facilities=["CH-TEST"], now=datetime.now(UTC))

    def client_context(common_name: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(context)
        if common_name:
            ca.issue_cert("sender.test", common_name=common_name).configure_cert(context)
        return context

    async def scenario() -> None:
        await runtime.start(mllp=True, worker=False)
        assert runtime.mllp is not None
        port = runtime.mllp.port
        try:
            async with MLLPClient("127.0.0.1", port, timeout=10, ssl_context=client_context("chu-tls")) as c:
                own = await c.send(Adt(control_id="T-1").bytes())
                other = await c.send(Adt(control_id="T-2", facility="CH-OTHER").bytes())
            assert _ack_code(own) == "AA"
            assert _ack_code(other) == "AR" and b"MSH-4" in other
            async with MLLPClient("127.0.0.1", port, timeout=10, ssl_context=client_context("stranger")) as c:
                stranger = await c.send(Adt(control_id="T-3").bytes())
            assert _ack_code(stranger) == "AR" and b"no facility" in stranger
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, TimeoutError)):
                async with MLLPClient("127.0.0.1", port, timeout=5, ssl_context=client_context(None)) as c:
                    await c.send(Adt(control_id="T-4").bytes())
        finally:
            await runtime.stop()

    asyncio.run(scenario())
    with runtime.db.connect() as conn:
        kept = {m.control_id: m.outcome for m in MessageRepo(conn).list()}
    runtime.close()
    assert kept == {"T-1": "AA", "T-2": "AR", "T-3": "AR"}  # refused messages are kept too
