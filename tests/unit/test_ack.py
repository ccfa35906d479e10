"""ACK building: MSA echo, swapped routing, ERR shape, escaping of human text, charset; checked by re-parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.hl7 import ack as ack_module
from gateway.hl7 import er7
from gateway.hl7.ack import CODE_TEXT, STAMP_MEMO_SIZE, AckIssue, ack_stamp, build_ack, encode_ack, escape
from gateway.hl7.er7 import Encoding

NOW = datetime(2026, 3, 15, 10, 15, 30, tzinfo=UTC)


def inbound(
    *,
    control: str = "CTRL-0042",
    trigger: str = "A01",
    structure: str = "ADT_A01",
    charset: str = "",
    processing: str = "P",
    version: str = "2.5^FRA^2.11",
) -> er7.Message:
    fields = [
        "GAM-TEST",
        "CH-TEST",
        "GATEWAY",
        "ARS-TEST",
        "20260315101500",
        "",
        f"ADT^{trigger}^{structure}",
        control,
        processing,
        version,
        "",
        "",
        "",
        "",
        "FRA",
        charset,
    ]
    text = "MSH|^~\\&|" + "|".join(fields) + "\rEVN||20260315101500\rPID|1||100001^^^CH-TEST^PI\r"
    return er7.parse(text)


def reparse(ack: str) -> er7.Message:
    parsed = er7.parse(ack)
    assert parsed.warnings == []
    return parsed


def test_accept_ack_echoes_control_id_and_swaps_routing() -> None:
    ack = reparse(build_ack(inbound(), code="AA", issues=[], now=NOW))
    msh = ack.msh
    assert msh.get(3) == "GATEWAY"  # sender of the ACK = receiver of the message
    assert msh.get(4) == "ARS-TEST"
    assert msh.get(5) == "GAM-TEST"
    assert msh.get(6) == "CH-TEST"
    assert msh.get(7) == "20260315101530"
    assert msh.get(9, 1) == "ACK"
    assert msh.get(9, 2) == "A01"
    assert msh.get(9, 3) == "ACK"
    assert msh.get(10)  # its own control id, never empty
    assert msh.get(10) != "CTRL-0042"
    assert msh.get(11) == "P"
    assert msh.raw(12) == "2.5^FRA^2.11"
    msa = ack.segment("MSA")
    assert msa is not None
    assert msa.get(1) == "AA"
    assert msa.get(2) == "CTRL-0042"
    assert [s.name for s in ack.segments] == ["MSH", "MSA"]


@pytest.mark.parametrize(("trigger", "structure"), [("A03", "ADT_A03"), ("A04", "ADT_A01"), ("Z99", "")])
def test_ack_message_type_carries_the_trigger(trigger: str, structure: str) -> None:
    ack = reparse(build_ack(inbound(trigger=trigger, structure=structure), code="AA", issues=[], now=NOW))
    assert ack.msh.raw(9) == f"ACK^{trigger}^ACK"


def test_ack_control_ids_are_unique() -> None:
    message = inbound()
    first = reparse(build_ack(message, code="AA", issues=[], now=NOW)).msh.get(10)
    second = reparse(build_ack(message, code="AA", issues=[], now=NOW)).msh.get(10)
    assert first != second


def test_processing_id_and_version_echoed_or_defaulted() -> None:
    ack = reparse(build_ack(inbound(processing="T", version="2.3.1"), code="AA", issues=[], now=NOW))
    assert ack.msh.get(11) == "T"
    assert ack.msh.get(12) == "2.3.1"
    ack = reparse(build_ack(inbound(processing="", version=""), code="AA", issues=[], now=NOW))
    assert ack.msh.get(11) == "P"
    assert ack.msh.get(12) == "2.5"


def test_control_id_with_delimiters_is_escaped_and_round_trips() -> None:
    message = er7.parse("MSH|^~\\&|GAM|CH-TEST|||20260315||ADT^A01|ID\\S\\7\\T\\8|P|2.5\r")
    assert message.msh.get(10) == "ID^7&8"
    ack = build_ack(message, code="AA", issues=[], now=NOW)
    msa = reparse(ack).segment("MSA")
    assert msa is not None
    assert msa.get(2) == "ID^7&8"
    assert msa.first(2).raw == "ID\\S\\7\\T\\8"


def test_err_segment_shape() -> None:
    issue = AckIssue(code="101", text="PV1-19 is empty", location="PV1-19", severity="E")
    ack = reparse(build_ack(inbound(), code="AE", issues=[issue], now=NOW, text="visit number missing"))
    msa = ack.segment("MSA")
    assert msa is not None
    assert msa.get(1) == "AE"
    assert msa.get(3) == "visit number missing"
    err = ack.segment("ERR")
    assert err is not None
    assert err.get(1) == ""
    # ERR-2 (ERL): segment ^ sequence ^ field [^ repetition ^ component ^ subcomponent]
    assert err.get(2, 1) == "PV1"
    assert err.get(2, 2) == "1"
    assert err.get(2, 3) == "19"
    assert err.get(2, 5) == ""
    # ERR-3: table 0357 code ^ its text ^ HL70357
    assert err.get(3, 1) == "101"
    assert err.get(3, 2) == CODE_TEXT["101"]
    assert err.get(3, 3) == "HL70357"
    assert err.get(4) == "E"
    assert err.get(5) == err.get(6) == err.get(7) == ""
    assert err.get(8) == "PV1-19 is empty"


def test_err_location_with_component_and_subcomponent() -> None:
    issues = [
        AckIssue(code="102", text="bad date", location="PV1-44.1.2", severity="W"),
        AckIssue(code="100", text="no PID", location="PID"),
        AckIssue(code="207", text="internal", location=""),
        AckIssue(code="207", text="odd", location="not a location"),
    ]
    ack = reparse(build_ack(inbound(), code="AE", issues=issues, now=NOW))
    errs = list(ack.all("ERR"))
    assert len(errs) == 4
    first = errs[0]
    assert [first.get(2, c) for c in range(1, 7)] == ["PV1", "1", "44", "1", "1", "2"]
    assert first.get(4) == "W"
    second = errs[1]
    assert second.get(2, 1) == "PID"
    assert second.get(2, 3) == ""
    assert second.get(3, 2) == CODE_TEXT["100"]
    assert errs[2].get(2) == ""
    assert errs[3].get(2) == ""
    assert errs[3].get(8) == "odd"


def test_unknown_table_code_has_empty_text() -> None:
    ack = reparse(build_ack(inbound(), code="AE", issues=[AckIssue(code="999", text="x")], now=NOW))
    err = ack.segment("ERR")
    assert err is not None
    assert err.get(3, 1) == "999"
    assert err.get(3, 2) == ""
    assert err.get(3, 3) == "HL70357"


def test_human_text_cannot_break_structure() -> None:
    nasty = "bad | field ^ comp & sub ~ rep \\ esc\rPID|injected\nZZZ|x"
    ack_text = build_ack(
        inbound(), code="AE", issues=[AckIssue(code="102", text=nasty, location="PID-5")], now=NOW, text=nasty
    )
    ack = reparse(ack_text)
    assert [s.name for s in ack.segments] == ["MSH", "MSA", "ERR"]
    err = ack.segment("ERR")
    assert err is not None
    assert len(err.fields) == 9  # ERR-1 … ERR-8, nothing spilled into extra fields
    assert err.get(8) == nasty.replace("\r", " ").replace("\n", " ")
    assert len(err.repetitions(8)) == 1
    msa = ack.segment("MSA")
    assert msa is not None
    assert len(msa.fields) == 4
    assert len(msa.get(3)) > 20
    assert "bad | field ^ comp & sub ~ rep \\ esc PID|injected ZZZ|x".startswith(msa.get(3))


def test_msa_text_is_clipped_without_splitting_an_escape_sequence() -> None:
    text = "a" * 79 + "|b"
    ack = reparse(build_ack(inbound(), code="AE", issues=[], now=NOW, text=text))
    msa = ack.segment("MSA")
    assert msa is not None
    raw = msa.first(3).raw
    assert len(raw) <= 80
    # The cut falls inside "\F\": the whole sequence goes, not half of it.
    assert raw == "a" * 79
    assert msa.get(3) == "a" * 79


def test_msa_text_clipped_to_80_characters() -> None:
    text = "x|" * 60
    ack = reparse(build_ack(inbound(), code="AE", issues=[], now=NOW, text=text))
    msa = ack.segment("MSA")
    assert msa is not None
    assert len(msa.first(3).raw) <= 80
    value = msa.get(3)
    assert text.startswith(value)
    assert value.endswith(("x", "|"))
    assert len(value) >= 80 // 4  # each "x|" pair takes 4 escaped characters


def test_escape_with_custom_delimiters() -> None:
    enc = Encoding(field="#", component="$", repetition="*", escape="!", subcomponent="@")
    assert escape("a#b$c*d@e!f|g\nh", enc) == "a!F!b!S!c!R!d!T!e!E!f|g h"
    assert er7.unescape(escape("a#b$c*d@e!f", enc), enc) == "a#b$c*d@e!f"


def test_ack_uses_the_senders_delimiters() -> None:
    message = er7.parse("MSH#$*!@#GAM#CH-TEST#GATEWAY#ARS#20260315##ADT$A03#C!F!7#P#2.5\r")
    assert message.msh.get(10) == "C#7"
    ack_text = build_ack(message, code="AE", issues=[AckIssue(code="101", text="a#b", location="PV1-45")], now=NOW)
    assert ack_text.startswith("MSH#$*!@#GATEWAY#ARS#GAM#CH-TEST#")
    ack = reparse(ack_text)
    assert ack.encoding == message.encoding
    assert ack.msh.get(9, 2) == "A03"
    assert ack.segment("MSA").get(2) == "C#7"  # type: ignore[union-attr]
    err = ack.segment("ERR")
    assert err is not None
    assert err.get(2, 1) == "PV1"
    assert err.get(2, 3) == "45"
    assert err.get(8) == "a#b"


def test_ack_for_unparseable_input() -> None:
    issue = AckIssue(code="102", text="message does not start with an MSH segment", location="MSH")
    ack_text = build_ack(None, code="AR", issues=[issue], now=NOW, control_id_hint="HINT|9")
    ack = reparse(ack_text)
    msh = ack.msh
    assert msh.get(1) == "|"
    assert msh.get(2) == "^~\\&"
    assert msh.get(3) == msh.get(4) == msh.get(5) == msh.get(6) == ""
    assert msh.get(9, 1) == "ACK"
    assert msh.get(9, 2) == ""
    assert msh.get(9, 3) == "ACK"
    assert msh.get(11) == "P"
    assert msh.get(12) == "2.5"
    assert msh.get(18) == ""
    msa = ack.segment("MSA")
    assert msa is not None
    assert msa.get(1) == "AR"
    assert msa.get(2) == "HINT|9"
    err = ack.segment("ERR")
    assert err is not None
    assert err.get(2) == "MSH"
    assert err.get(3, 1) == "102"
    assert err.get(8) == issue.text


def test_ack_for_unparseable_input_without_hint_has_empty_msa2() -> None:
    ack = reparse(build_ack(None, code="AR", issues=[], now=NOW))
    msa = ack.segment("MSA")
    assert msa is not None
    assert msa.get(1) == "AR"
    assert msa.get(2) == ""


@pytest.mark.parametrize("charset", ["8859/15", "8859/1", "UNICODE UTF-8"])
def test_charset_echoed_in_msh18(charset: str) -> None:
    ack = reparse(build_ack(inbound(charset=charset), code="AA", issues=[], now=NOW))
    assert ack.msh.get(18) == charset
    assert ack.msh.get(13) == ack.msh.get(17) == ""


def test_no_charset_no_msh18() -> None:
    ack_text = build_ack(inbound(charset=""), code="AA", issues=[], now=NOW)
    assert reparse(ack_text).msh.get(18) == ""
    assert ack_text.split("\r")[0].count("|") == 11  # MSH ends at MSH-12


def test_segments_end_with_cr() -> None:
    ack_text = build_ack(inbound(), code="AE", issues=[AckIssue(code="101", text="x")], now=NOW)
    assert ack_text.endswith("\r")
    assert "\n" not in ack_text
    assert ack_text.count("\r") == 3


def test_encode_ack_in_senders_charset() -> None:
    message = inbound(charset="8859/15")
    ack_text = build_ack(message, code="AE", issues=[AckIssue(code="103", text="Cœur: 5 € ☃")], now=NOW, text="Œuvre")
    data = encode_ack(ack_text, "iso8859-15")
    decoded = reparse(data.decode("iso8859-15"))
    assert decoded.segment("ERR").get(8) == "Cœur: 5 € ?"  # type: ignore[union-attr]
    assert decoded.segment("MSA").get(3) == "Œuvre"  # type: ignore[union-attr]


def test_encode_ack_replaces_unencodable_characters() -> None:
    ack_text = build_ack(inbound(charset="8859/1"), code="AE", issues=[AckIssue(code="103", text="é€Œ")], now=NOW)
    data = encode_ack(ack_text, "latin-1")
    assert b"\xe9??" in data
    parsed = er7.parse(data)
    assert parsed.codec == "latin-1"
    assert parsed.segment("ERR").get(8) == "é??"  # type: ignore[union-attr]
    assert encode_ack("MSA|AA|x", "ascii") == b"MSA|AA|x"
    assert encode_ack("MSA|AE|é", "ascii") == b"MSA|AE|?"
    assert encode_ack("MSA|AE|é", "utf-8") == "MSA|AE|é".encode()


def test_ack_stamp_is_strftime_across_seconds_zones_and_microseconds() -> None:
    """The memoized stamp is what ``strftime`` gives, for many distinct seconds (more than the memo
    holds, back and forth), microseconds and zones, naive or aware; the ACK's MSH-7 and control id use it."""
    paris = timezone(timedelta(hours=1))
    moments = [NOW + timedelta(seconds=k, microseconds=(k * 7919) % 1_000_000) for k in range(-40, 40, 3)]
    moments += [m.astimezone(paris) for m in moments] + [m.replace(tzinfo=None) for m in moments]
    for moment in moments + moments[::-1]:
        assert ack_stamp(moment) == moment.strftime("%Y%m%d%H%M%S")
        ack = reparse(build_ack(inbound(), code="AA", issues=[], now=moment))
        assert ack.msh.get(7) == moment.strftime("%Y%m%d%H%M%S")
        assert ack.msh.get(10).startswith(f"ACK{moment.strftime('%Y%m%d%H%M%S')}")
    # one instant in two zones: equal datetimes, different text
    assert ack_stamp(NOW) != ack_stamp(NOW.astimezone(paris))


def test_ack_stamp_memo_is_bounded() -> None:
    ack_module._stamp.cache_clear()
    for k in range(10 * STAMP_MEMO_SIZE):
        ack_stamp(NOW + timedelta(seconds=k))
    info = ack_module._stamp.cache_info()
    assert info.currsize == STAMP_MEMO_SIZE == info.maxsize
    ack_stamp(NOW + timedelta(seconds=10 * STAMP_MEMO_SIZE - 1, microseconds=5))
    assert ack_module._stamp.cache_info().hits == info.hits + 1  # the same second, shared
