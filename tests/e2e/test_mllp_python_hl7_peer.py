"""Our MLLP server against a third-party peer: python-hl7's blocking ``hl7.client.MLLPClient``."""

from __future__ import annotations

import asyncio

import hl7
import hl7.client
import pytest

from gateway.hl7.mllp import END_BLOCK, START_BLOCK, MLLPServer

pytestmark = pytest.mark.e2e

MESSAGE = (
    "MSH|^~\\&|GAM|CH-TEST|GW|GW|20260101120000||ADT^A01^ADT_A01|{control_id}|P|2.5\r"
    "EVN||20260101120000\r"
    "PID|1||123^^^CH-TEST^PI||DUPONT^JEANNE\r"
)


async def ack_handler(message: bytes) -> bytes:
    """A minimal AA ACK echoing MSH-10, enough for the peer library to parse."""
    msh = message.split(b"\r", 1)[0].split(b"|")
    control_id = msh[9]
    return (
        b"MSH|^~\\&|GW|GW|GAM|CH-TEST|20260101120001||ACK^A01^ACK|ACK-" + control_id + b"|P|2.5\r"
        b"MSA|AA|" + control_id + b"\r"
    )


def send_with_python_hl7(port: int, messages: list[str]) -> list[bytes]:
    """Blocking: one python-hl7 connection, one message at a time, as a legacy sender would."""
    with hl7.client.MLLPClient("127.0.0.1", port) as client:
        client.socket.settimeout(5.0)
        return [client.send_message(message) for message in messages]


def test_python_hl7_client_gets_three_acks_in_order_on_one_connection() -> None:
    control_ids = ["MSG1", "MSG2", "MSG3"]
    messages = [MESSAGE.format(control_id=cid) for cid in control_ids]

    async def scenario() -> tuple[list[bytes], int, int]:
        server = MLLPServer(ack_handler, port=0)
        await server.start()
        try:
            raw_acks = await asyncio.to_thread(send_with_python_hl7, server.port, messages)
        finally:
            await server.stop(grace=1.0)
        return raw_acks, server.connections_total, server.messages_total

    raw_acks, connections, handled = asyncio.run(scenario())

    assert connections == 1
    assert handled == 3
    for raw in raw_acks:  # the peer returns the framed bytes it received
        assert raw.startswith(START_BLOCK)
        assert raw.endswith(END_BLOCK)
    acks = [hl7.parse(raw[1:-2].decode()) for raw in raw_acks]
    assert [str(ack.segment("MSA")[2]) for ack in acks] == control_ids
    assert [str(ack.segment("MSA")[1]) for ack in acks] == ["AA"] * 3
    assert [str(ack.segment("MSH")[9]) for ack in acks] == ["ACK^A01^ACK"] * 3
