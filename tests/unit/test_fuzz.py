"""Fuzz suite, pure part: thousands of hostile inputs through parse, checks, map and ACK; and MLLP framing.

Mutations of the fixtures (``tests/fuzzing.py``: bit flips, truncations, separators, encodings, dates,
huge fields, framing bytes, terminators, segments) and hypothesis-made bytes. No input may raise out of
the steps except as a ``GatewayError``, and every answer is an ACK with MSH and MSA (and ERR unless AA).
``bench/fuzz`` runs the same inputs by the million.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.hl7.mllp import START_BLOCK, FrameDecoder, FrameTooLargeError, frame
from gateway.mapping.engine import Engine
from tests.fuzzing import MUTATORS, ack_code, ack_problem, load_seeds, mutate, pure_step

SEEDS = load_seeds()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("batch", range(4))
def test_mutated_fixtures_always_get_an_ack(mapping_engine: Engine, batch: int) -> None:
    rng = random.Random(1200 + batch)
    for _ in range(600):
        seed = rng.getrandbits(32)
        raw, names = mutate(rng.choice(SEEDS), random.Random(seed))
        problem = ack_problem(pure_step(mapping_engine, raw))
        assert problem is None, (seed, names, problem)


def test_a_field_separator_flipped_into_the_escape_character_gets_a_readable_ar(mapping_engine: Engine) -> None:
    """bench/fuzz seed 12 found it: a bit flip made MSH-1 ``\\``, the escape character of MSH-2; the ACK echoed
    those delimiters and its MSA-1 could not be read. Now the header is malformed: AR in standard delimiters."""
    raw = (
        b"MSH\\^~\\&|GAM|CH|GATEWAY|ARS|20261206173000||ADT^A03^ADT_A03|C-1|P|2.5\r"
        b"EVN||20261206173000\rPID|||1^^^CH&1.2.3&ISO^PI\rPV1||I|||||||||||||||||V1\r"
    )
    ack = pure_step(mapping_engine, raw)
    assert ack.startswith(b"MSH|^~\\&|")
    assert ack_code(ack) == "AR"
    assert b"ERR|" in ack and b"|MSH^1^2" in ack
    assert ack_problem(ack) is None


def test_ack_problem_reads_the_acks_own_delimiters() -> None:
    assert ack_code(b"MSH#$*!@#A#B#C#D#20260101##ACK#1#P#2.5\rMSA#AE#C-1\rERR###207\r") == "AE"
    assert ack_problem(b"MSH#$*!@#A#B#C#D#20260101##ACK#1#P#2.5\rMSA#AE#C-1\rERR###207\r") is None
    unreadable = b"MSH\\^~\\&\\A\\B\rMSA\\AA\\C-1\r"
    assert ack_problem(unreadable) is not None and "distinct" in (ack_problem(unreadable) or "")


@pytest.mark.parametrize("name", sorted(MUTATORS))
def test_each_mutator_alone_on_every_fixture(mapping_engine: Engine, name: str) -> None:
    rng = random.Random(name)
    for seed_bytes in SEEDS:
        raw = MUTATORS[name](seed_bytes, rng)
        assert ack_problem(pure_step(mapping_engine, raw)) is None, name


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_after_an_msh_get_an_ack(mapping_engine: Engine, tail: bytes) -> None:
    raw = b"MSH|^~\\&|A|B|C|D|20260301||ADT^A01|X1|P|2.5\r" + tail
    assert ack_problem(pure_step(mapping_engine, raw)) is None


@FUZZ
@given(
    st.lists(
        st.sampled_from(
            [
                "|",
                "^",
                "~",
                "\\",
                "&",
                "\r",
                "\n",
                "MSH",
                "PID",
                "PV1",
                "ZBE",
                "EVN",
                "A01",
                "ADT",
                "20260301",
                "+2400",
                "00010101",
                "é",
                "\x00",
                "9" * 20,
                "a",
            ]
        ),
        max_size=80,
    )
)
def test_separator_soup_gets_an_ack(mapping_engine: Engine, parts: list[str]) -> None:
    raw = ("MSH|^~\\&|A|B|C|D|20260301||ADT^A01|X1|P|2.5\r" + "".join(parts)).encode("utf-8")
    assert ack_problem(pure_step(mapping_engine, raw)) is None


# -- framing ------------------------------------------------------------------------------------


@FUZZ
@given(
    st.lists(st.binary(max_size=60).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")), max_size=8),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=30),
)
def test_frames_come_out_whole_however_the_stream_is_cut(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(m) for m in messages)
    decoder = FrameDecoder(max_message_bytes=1000)
    out: list[bytes] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        out.extend(decoder.feed(stream[pos : pos + step]))
        pos, i = pos + step, i + 1
    assert out == messages


@FUZZ
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=300))
def test_decoder_never_raises_other_than_too_large_and_stays_bounded(data: bytes, limit: int) -> None:
    decoder = FrameDecoder(max_message_bytes=limit)
    for i in range(0, len(data), 97):
        try:
            for message in decoder.feed(data[i : i + 97]):
                assert len(message) <= limit
        except FrameTooLargeError as exc:
            assert len(exc.prefix) <= len(data)
        assert len(decoder._buffer) <= limit + 1 + len(START_BLOCK) + 97
    if decoder.lone_end_pending:
        message = decoder.finish_lone_end()
        assert message is not None and len(message) <= limit
