"""ER7 reading: separators, framing, charsets, escapes, field numbering, and never crashing on garbage."""

from __future__ import annotations

import codecs

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ParseError
from gateway.hl7 import er7
from gateway.hl7.er7 import Encoding, Path, parse, unescape

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def msh(fields: dict[int, str], *, sep: str = "|", enc_chars: str = "^~\\&") -> str:
    """An MSH segment with ``fields[n]`` at MSH-n (MSH-1 and MSH-2 come from ``sep`` and ``enc_chars``)."""
    top = max(fields, default=2)
    return "MSH" + sep + enc_chars + "".join(sep + fields.get(n, "") for n in range(3, top + 1))


def seg(name: str, fields: dict[int, str], *, sep: str = "|") -> str:
    """A segment with ``fields[n]`` at position n."""
    top = max(fields, default=0)
    return name + "".join(sep + fields.get(n, "") for n in range(1, top + 1))


HEADER = {3: "GAM-TEST", 4: "CH-TEST", 7: "20260315101500", 9: "ADT^A01^ADT_A01", 10: "CTRL-1", 12: "2.5"}


def message(*segments: str, terminator: str = "\r") -> str:
    return terminator.join(segments) + terminator


def latin_message(charset: str, name: str) -> str:
    return message(msh({**HEADER, 18: charset}), seg("PID", {1: "1", 3: "100001", 5: name}))


# -- segment separators and framing -----------------------------------------------------------


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n", "\n\r"])
def test_segment_separators(terminator: str) -> None:
    text = message(msh(HEADER), seg("PID", {3: "100001"}), seg("PV1", {2: "I", 19: "V-1"}), terminator=terminator)
    parsed = parse(text.encode("ascii"))
    assert [s.name for s in parsed.segments] == ["MSH", "PID", "PV1"]
    assert parsed.segment("PID").get(3) == "100001"  # type: ignore[union-attr]
    # The last field of each segment keeps no trace of the terminator.
    assert parsed.segment("PV1").get(19) == "V-1"  # type: ignore[union-attr]
    assert parsed.msh.get(12) == "2.5"
    assert parsed.warnings == []


def test_mixed_separators_and_blank_lines() -> None:
    text = msh(HEADER) + "\r\n\r\n" + seg("PID", {3: "100001"}) + "\n\n" + seg("PV1", {2: "O"}) + "\r"
    parsed = parse(text)
    assert [s.name for s in parsed.segments] == ["MSH", "PID", "PV1"]
    assert parsed.segment("PV1").get(2) == "O"  # type: ignore[union-attr]


def test_utf8_bom_is_ignored() -> None:
    body = message(msh({**HEADER, 18: "UNICODE UTF-8"}), seg("PID", {5: "CRÉPIN^RENÉ"}))
    parsed = parse(codecs.BOM_UTF8 + body.encode("utf-8"))
    assert parsed.msh.name == "MSH"
    assert parsed.msh.get(3) == "GAM-TEST"
    assert parsed.segment("PID").get(5) == "CRÉPIN"  # type: ignore[union-attr]
    assert parsed.codec == "utf-8"
    assert parsed.warnings == []


def test_bom_in_already_decoded_text() -> None:
    parsed = parse("\ufeff" + message(msh(HEADER), seg("PID", {3: "7"})))
    assert parsed.segment("PID").get(3) == "7"  # type: ignore[union-attr]


def test_mllp_framing_bytes_are_stripped() -> None:
    body = message(msh(HEADER), seg("PID", {3: "100001"}))
    parsed = parse(b"\x0b" + body.encode("ascii") + b"\x1c\r")
    assert [s.name for s in parsed.segments] == ["MSH", "PID"]
    assert parsed.msh.get(3) == "GAM-TEST"
    assert parsed.segment("PID").get(3) == "100001"  # type: ignore[union-attr]


# -- character sets ---------------------------------------------------------------------------


def test_charset_8859_1() -> None:
    raw = latin_message("8859/1", "LEFÈVRE^HÉLÈNE").encode("latin-1")
    parsed = parse(raw)
    assert parsed.codec == "latin-1"
    assert parsed.segment("PID").get(5) == "LEFÈVRE"  # type: ignore[union-attr]
    assert parsed.segment("PID").get(5, 2) == "HÉLÈNE"  # type: ignore[union-attr]
    assert parsed.warnings == []


def test_charset_8859_15_decodes_euro_and_oe() -> None:
    # 0xA4 is € in 8859-15 and ¤ in 8859-1; 0xBD is œ in 8859-15 and ½ in 8859-1.
    raw = latin_message("8859/15", "CŒUR^€").encode("iso8859-15")
    assert b"\xbc" in raw  # Œ
    assert b"\xa4" in raw  # €
    parsed = parse(raw)
    assert parsed.codec == "iso8859-15"
    assert parsed.segment("PID").get(5) == "CŒUR"  # type: ignore[union-attr]
    assert parsed.segment("PID").get(5, 2) == "€"  # type: ignore[union-attr]
    assert parsed.warnings == []


def test_charset_unicode_utf8() -> None:
    raw = latin_message("UNICODE UTF-8", "NGUYỄN^ÉLOÏSE").encode("utf-8")
    parsed = parse(raw)
    assert parsed.codec == "utf-8"
    assert parsed.segment("PID").get(5) == "NGUYỄN"  # type: ignore[union-attr]
    assert parsed.segment("PID").get(5, 2) == "ÉLOÏSE"  # type: ignore[union-attr]
    assert parsed.warnings == []


def test_charset_with_component_and_lowercase() -> None:
    # MSH-18 is read by its first component and case-insensitively.
    raw = latin_message("8859/1^extra", "BRÛLÉ").encode("latin-1")
    assert parse(raw).codec == "latin-1"
    raw = latin_message("unicode utf-8", "BRÛLÉ").encode("utf-8")
    assert parse(raw).codec == "utf-8"


def test_no_charset_means_utf8() -> None:
    parsed = parse(latin_message("", "ÉTIENNE").encode("utf-8"))
    assert parsed.codec == "utf-8"
    assert parsed.segment("PID").get(5) == "ÉTIENNE"  # type: ignore[union-attr]
    assert parsed.warnings == []


def test_declared_utf8_but_latin1_bytes_falls_back_with_warning() -> None:
    raw = latin_message("UNICODE UTF-8", "LEFÈVRE^HÉLÈNE").encode("latin-1")
    parsed = parse(raw)
    assert parsed.codec in ("cp1252", "latin-1")
    assert parsed.segment("PID").get(5) == "LEFÈVRE"  # type: ignore[union-attr]
    assert parsed.segment("PID").get(5, 2) == "HÉLÈNE"  # type: ignore[union-attr]
    assert len(parsed.warnings) == 1
    assert "fallback" in parsed.warnings[0]


def test_fallback_to_latin1_when_cp1252_cannot_decode() -> None:
    # 0x81 is undefined in cp1252 and invalid UTF-8: only latin-1 takes it.
    raw = latin_message("UNICODE UTF-8", "X").encode("ascii").replace(b"|X", b"|A\x81B")
    parsed = parse(raw)
    assert parsed.codec == "latin-1"
    assert parsed.segment("PID").get(5) == "A\x81B"  # type: ignore[union-attr]
    assert parsed.warnings


def test_declared_ascii_with_8bit_bytes_falls_back() -> None:
    raw = latin_message("ASCII", "DÉSIRÉ").encode("utf-8")
    parsed = parse(raw)
    assert parsed.codec == "utf-8"
    assert parsed.segment("PID").get(5) == "DÉSIRÉ"  # type: ignore[union-attr]
    assert any("fallback" in w for w in parsed.warnings)


def test_unknown_charset_warns_and_still_decodes() -> None:
    parsed = parse(latin_message("EBCDIC-FR", "NOËL").encode("utf-8"))
    assert parsed.codec == "utf-8"
    assert parsed.segment("PID").get(5) == "NOËL"  # type: ignore[union-attr]
    assert any("EBCDIC-FR" in w and "unknown" in w for w in parsed.warnings)


def test_unknown_charset_with_latin1_bytes() -> None:
    parsed = parse(latin_message("KOI8-FR", "NOËL").encode("latin-1"))
    assert parsed.segment("PID").get(5) == "NOËL"  # type: ignore[union-attr]
    assert parsed.codec == "cp1252"
    assert any("unknown" in w for w in parsed.warnings)


def test_sniff_charset_reads_msh18_only() -> None:
    assert er7.sniff_charset(latin_message("8859/15", "A").encode()) == "8859/15"
    assert er7.sniff_charset(b"\x0b" + latin_message("8859/1", "A").encode()) == "8859/1"
    assert er7.sniff_charset(msh(HEADER).encode()) == ""
    assert er7.sniff_charset(b"PID|1|2") == ""
    assert er7.sniff_charset(b"") == ""


# -- escapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("escaped", "expected"),
    [
        ("A\\F\\B", "A|B"),
        ("A\\S\\B", "A^B"),
        ("A\\T\\B", "A&B"),
        ("A\\R\\B", "A~B"),
        ("A\\E\\B", "A\\B"),
        ("\\X41\\", "A"),
        ("\\X4142\\", "AB"),
        ("\\XE9\\", "é"),
        ("LINE1\\.br\\LINE2", "LINE1\nLINE2"),
        ("\\H\\BOLD\\N\\", "BOLD"),
        ("NO ESCAPE", "NO ESCAPE"),
        ("TRAILING\\", "TRAILING\\"),
        ("\\Q\\", "\\Q\\"),  # unknown escape kept verbatim
        ("\\XZZ\\", "\\XZZ\\"),  # not hex: kept verbatim
    ],
)
def test_escapes_in_fields(escaped: str, expected: str) -> None:
    parsed = parse(message(msh(HEADER), seg("NTE", {3: escaped})))
    assert parsed.segment("NTE").get(3) == expected  # type: ignore[union-attr]


def test_escaped_delimiters_do_not_split() -> None:
    parsed = parse(message(msh(HEADER), seg("PID", {5: "O\\S\\BRIEN^ANNE\\T\\MARIE~SECOND"})))
    pid = parsed.segment("PID")
    assert pid is not None
    assert pid.get(5, 1) == "O^BRIEN"
    assert pid.get(5, 2) == "ANNE&MARIE"
    assert len(pid.repetitions(5)) == 2


def test_unescape_with_custom_escape_character() -> None:
    enc = Encoding(field="#", component="$", repetition="*", escape="!", subcomponent="@")
    assert unescape("A!F!B!S!C!T!D!R!E!E!", enc) == "A#B$C@D*E!"
    assert unescape("A\\F\\B", enc) == "A\\F\\B"  # backslash is an ordinary character here


# -- custom encoding characters ---------------------------------------------------------------


def test_custom_encoding_characters() -> None:
    fields = {3: "GAM$CORE", 4: "CH-TEST", 9: "ADT$A04$ADT_A01", 10: "C-9", 18: "UNICODE UTF-8"}
    text = message(
        msh(fields, sep="#", enc_chars="$*!@"),
        seg("PID", {3: "11$$$CH-TEST@1.2.3@ISO$PI*22$$$OTHER$AN", 5: "A!F!B$C"}, sep="#"),
    )
    parsed = parse(text.encode("utf-8"))
    assert parsed.encoding == Encoding(field="#", component="$", repetition="*", escape="!", subcomponent="@")
    assert parsed.msh.get(1) == "#"
    assert parsed.msh.get(2) == "$*!@"
    assert parsed.msh.get(3) == "GAM"
    assert parsed.msh.get(3, 2) == "CORE"
    assert parsed.msh.get(9, 2) == "A04"
    pid = parsed.segment("PID")
    assert pid is not None
    reps = pid.repetitions(3)
    assert [r.get(1) for r in reps] == ["11", "22"]
    assert reps[0].get(4, 2) == "1.2.3"
    assert reps[1].get(5) == "AN"
    assert pid.get(5) == "A#B"
    assert pid.get(5, 2) == "C"


def test_two_encoding_characters_default_the_rest() -> None:
    parsed = parse(message(msh(HEADER, enc_chars="^~"), seg("PID", {3: "A&B^C"})))
    assert parsed.encoding.escape == "\\"
    assert parsed.encoding.subcomponent == "&"
    assert parsed.segment("PID").get(3, 1, 2) == "B"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("sep", "enc_chars"),
    [
        ("\\", "^~"),  # a bit flip turned | into \\: the defaulted escape character is the field separator
        ("\\", "^~\\&"),
        ("|", "^^\\&"),
        ("|", "^~\x1c\r\\&"),  # a CR in MSH-2 would end the ACK's MSH early
        ("|", "^ \\&"),
        ("|", "^~\\^"),
    ],
)
def test_delimiters_that_collide_are_malformed(sep: str, enc_chars: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse(message(msh(HEADER, sep=sep, enc_chars=enc_chars)))
    assert caught.value.location == "MSH-2"


# -- field numbering --------------------------------------------------------------------------


def test_msh_field_numbering() -> None:
    fields = {
        3: "GAM-TEST",
        4: "CH-TEST",
        5: "GATEWAY",
        6: "ARS-TEST",
        7: "20260315101500",
        9: "ADT^A01^ADT_A01",
        10: "CTRL-42",
        11: "P",
        12: "2.5^FRA^2.11",
        17: "FRA",
        18: "8859/15",
    }
    parsed = parse(message(msh(fields)))
    m = parsed.msh
    assert m.get(1) == "|"
    assert m.get(2) == "^~\\&"
    # MSH-2 holds the escape character yet is returned raw, never unescaped.
    assert m.raw(2) == "^~\\&"
    assert m.repetitions(2)[0].raw == "^~\\&"
    assert m.get(3) == "GAM-TEST"
    assert m.get(4) == "CH-TEST"
    assert m.get(5) == "GATEWAY"
    assert m.get(6) == "ARS-TEST"
    assert m.get(7) == "20260315101500"
    assert m.get(8) == ""
    assert m.get(9) == "ADT"
    assert m.get(9, 1) == "ADT"
    assert m.get(9, 2) == "A01"
    assert m.get(9, 3) == "ADT_A01"
    assert m.get(10) == "CTRL-42"
    assert m.get(11) == "P"
    assert m.get(12) == "2.5"
    assert m.get(12, 3) == "2.11"
    assert m.get(17) == "FRA"
    assert m.get(18) == "8859/15"
    assert parsed.value(Path.parse("MSH-9.2")) == "A01"
    assert parsed.value(Path.parse("MSH-12.2")) == "FRA"


def test_other_segment_field_numbering_and_nesting() -> None:
    pid = {
        1: "1",
        3: "100001^^^CH-TEST&1.2.250.1.999.9.1&ISO^PI~200002^^^OTHER&2.3.4&ISO^AN",
        5: "DUPONT^JEAN",
    }
    parsed = parse(message(msh(HEADER), seg("PID", pid)))
    segment = parsed.segment("PID")
    assert segment is not None
    assert segment.get(1) == "1"
    assert segment.get(2) == ""
    assert segment.get(3) == "100001"
    assert segment.get(3, 4) == "CH-TEST&1.2.250.1.999.9.1&ISO"  # subcomponent 0: the whole component
    assert segment.get(3, 4, 1) == "CH-TEST"
    assert segment.get(3, 4, 2) == "1.2.250.1.999.9.1"
    assert segment.get(3, 4, 3) == "ISO"
    assert segment.get(3, 5) == "PI"
    reps = segment.repetitions(3)
    assert len(reps) == 2
    assert reps[1].get(1) == "200002"
    assert reps[1].get(4, 2) == "2.3.4"
    assert reps[1].subcomponents(4) == ["OTHER", "2.3.4", "ISO"]
    assert parsed.value(Path.parse("PID-3.4.2")) == "1.2.250.1.999.9.1"
    assert parsed.value(Path.parse("PID-5")) == "DUPONT"
    assert parsed.value(Path.parse("PID-5.2")) == "JEAN"


def test_missing_positions_return_empty() -> None:
    parsed = parse(message(msh(HEADER), seg("PID", {3: "100001^^^CH-TEST"})))
    pid = parsed.segment("PID")
    assert pid is not None
    assert pid.get(0) == ""
    assert pid.get(4) == ""
    assert pid.get(99) == ""
    assert pid.get(3, 2) == ""
    assert pid.get(3, 9) == ""
    assert pid.get(3, 4, 5) == ""
    assert pid.get(3, 0) == ""
    assert pid.repetitions(99) == []
    assert not pid.first(99)
    assert parsed.msh.get(40) == ""
    assert parsed.segment("ZBE") is None
    assert parsed.value(Path.parse("ZBE-1")) == ""
    assert parsed.value(Path.parse("PID-30")) == ""


def test_repetition_truthiness_ignores_empty_components() -> None:
    parsed = parse(message(msh(HEADER), seg("PV1", {7: "^^", 8: "&^", 17: "123^X"})))
    pv1 = parsed.segment("PV1")
    assert pv1 is not None
    assert not pv1.first(7)
    assert not pv1.first(8)
    assert pv1.first(17)


def test_repeated_segments() -> None:
    parsed = parse(message(msh(HEADER), seg("ROL", {3: "ODRP"}), seg("ROL", {3: "AT"}), seg("PV1", {2: "I"})))
    assert [r.get(3) for r in parsed.all("ROL")] == ["ODRP", "AT"]
    assert parsed.segment("ROL").get(3) == "ODRP"  # type: ignore[union-attr]


def test_path_parse_and_str() -> None:
    assert Path.parse("PV1-3.4.2") == Path("PV1", 3, 4, 2)
    assert Path.parse(" PID-18 ") == Path("PID", 18)
    assert str(Path("PV1", 3, 4, 2)) == "PV1-3.4.2"
    assert str(Path("PID", 18)) == "PID-18"
    for bad in ("PV1", "pv1-3", "PV1.3", "PV1-3.x", "PV1-", ""):
        with pytest.raises(ValueError, match="not an HL7 position"):
            Path.parse(bad)


def test_segment_repr_hides_content() -> None:
    parsed = parse(message(msh(HEADER), seg("PID", {5: "SECRETNAME^JEANNE"})))
    text = repr(parsed.segment("PID"))
    assert "SECRETNAME" not in text
    assert "PID" in text


# -- invalid segments, missing MSH, garbage ---------------------------------------------------


def test_invalid_segment_names_skipped_with_warning() -> None:
    text = message(
        msh(HEADER),
        seg("PID", {3: "100001"}),
        "pid|lowercase",
        "ZB|too short",
        "PV1X|name glued to data",
        "  ",
        seg("PV1", {2: "I"}),
    )
    parsed = parse(text)
    assert [s.name for s in parsed.segments] == ["MSH", "PID", "PV1"]
    assert len(parsed.warnings) == 3
    assert all("invalid name" in w for w in parsed.warnings)
    # Warnings never quote the content (health data).
    assert not any("lowercase" in w or "glued" in w for w in parsed.warnings)


def test_segment_without_fields_is_kept() -> None:
    parsed = parse(message(msh(HEADER), "PD1", seg("PV1", {2: "I"})))
    assert [s.name for s in parsed.segments] == ["MSH", "PD1", "PV1"]
    assert parsed.segment("PD1").get(1) == ""  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   \r\n",
        b"PID|1||100001\rMSH|^~\\&|A|B\r",
        b"\x00\x01\x02garbage",
        b"MSH",
        b"MSH|^~",
        b"MSHA^~\\&|A",
        b"MSH\r^~\\&|A",
        b"MSH|^~\\&",
        b"MSH|^|",
        b"MSH|AB\\&|X|Y",
        b"\x1c\x0b",
        b"<html><body>Bad gateway</body></html>",
    ],
)
def test_unusable_input_raises_parse_error(raw: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse(raw)
    assert info.value.code == "102"
    assert info.value.ack_code == "AR"
    assert info.value.location.startswith("MSH")


def test_parse_error_for_text_input_too() -> None:
    with pytest.raises(ParseError):
        parse("EVN||20260101\rPID|1")


# -- properties -------------------------------------------------------------------------------


@PROPERTY
@given(
    prefix=st.sampled_from([b"", b"MSH", b"MSH|", b"MSH|^~\\&|", b"\xef\xbb\xbf\x0bMSH|^~\\&|"]),
    body=st.binary(max_size=400),
)
def test_parse_never_raises_anything_but_parse_error(prefix: bytes, body: bytes) -> None:
    try:
        parsed = parse(prefix + body)
    except ParseError as exc:
        assert exc.location.startswith("MSH")
        return
    assert parsed.segments[0].name == "MSH"
    for segment in parsed.segments:
        assert er7._SEGMENT_NAME.match(segment.name)
        for n in range(len(segment.fields) + 1):
            segment.get(n)
            segment.get(n, 2, 2)
            for rep in segment.repetitions(n):
                rep.subcomponents(1)


@PROPERTY
@given(body=st.text(max_size=300))
def test_parse_text_never_raises_anything_but_parse_error(body: str) -> None:
    try:
        parsed = parse("MSH|^~\\&|" + body)
    except ParseError:
        return
    assert parsed.msh.get(1) == "|"
    assert parsed.msh.get(2) == "^~\\&"


DELIMITERS = set("|^~\\&\r\n")
VALUE = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc", "Zl", "Zp"),
        blacklist_characters=sorted(DELIMITERS),
    ),
    max_size=12,
)
SEGMENT_NAMES = st.sampled_from(["PID", "PV1", "EVN", "ZBE", "PD1", "ROL", "NK1", "Z99"])


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[dict[int, str], list[tuple[str, list[list[list[str]]]]]]:
    """(MSH fields, other segments as fields → components → subcomponents) with no delimiter inside."""
    header = {n: draw(VALUE) for n in range(3, draw(st.integers(3, 20)) + 1)}
    header[18] = "UNICODE UTF-8"
    segments = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(SEGMENT_NAMES)
        fields = draw(
            st.lists(
                st.lists(st.lists(VALUE, min_size=1, max_size=3), min_size=1, max_size=4),
                min_size=1,
                max_size=10,
            )
        )
        segments.append((name, fields))
    return header, segments


@PROPERTY
@given(data=well_formed(), terminator=st.sampled_from(["\r", "\n", "\r\n"]))
def test_generated_values_round_trip(
    data: tuple[dict[int, str], list[tuple[str, list[list[list[str]]]]]], terminator: str
) -> None:
    header, segments = data
    lines = [msh(header)]
    for name, fields in segments:
        lines.append(name + "".join("|" + "^".join("&".join(subs) for subs in comps) for comps in fields))
    lines.append("ZZZ|END")  # the last line: trailing blanks of the final field are trimmed by design
    text = terminator.join(lines) + terminator

    for parsed in (parse(text), parse(text.encode("utf-8"))):
        assert parsed.warnings == []
        assert [s.name for s in parsed.segments] == ["MSH", *(name for name, _ in segments), "ZZZ"]
        for n, value in header.items():
            assert parsed.msh.get(n) == value
        for segment, (_, fields) in zip(parsed.segments[1:], segments, strict=False):
            for n, comps in enumerate(fields, start=1):
                for c, subs in enumerate(comps, start=1):
                    assert segment.get(n, c) == "&".join(subs)
                    for s, value in enumerate(subs, start=1):
                        assert segment.get(n, c, s) == value


# -- the encoding memo -------------------------------------------------------------------------


def _encoding_as_before(text: str) -> Encoding:
    """The unmemoized reading of MSH-1/MSH-2 from the whole text, as ``er7`` did before the memo."""
    sep = text[3]
    if sep.isalnum() or sep in "\r\n":
        raise ParseError("MSH-1 field separator is missing", location="MSH-1")
    chars = text[4 : text.find(sep, 4)] if sep in text[4:] else ""
    return er7._read_encoding(sep + chars)


def _outcome(read: object, text: str) -> object:
    try:
        return read(text)  # type: ignore[operator]
    except ParseError as exc:
        return ("error", exc.message, exc.location)


@PROPERTY
@given(
    st.text(alphabet="|#^~\\&$*!@ab1\r\n \x1c", min_size=1, max_size=12),
    st.text(alphabet="|^a\r", max_size=6),
)
def test_memoized_encoding_reads_as_the_unmemoized_one(head: str, rest: str) -> None:
    text = "MSH" + head + rest
    assert _outcome(er7._encoding, text) == _outcome(_encoding_as_before, text)
    assert _outcome(er7._encoding, text) == _outcome(_encoding_as_before, text)  # a second time, from the memo


def test_encoding_memo_is_bounded_and_skips_long_declarations() -> None:
    er7._known_encoding.cache_clear()
    alphabet = "#$*!@%+=-_/:;,.?"
    declarations = [
        sep + "".join(alphabet[(i + k) % len(alphabet)] for k in range(1, 5)) for i, sep in enumerate(alphabet)
    ]
    declarations += ["|^~\\&", "|^~\\&#", "|^~", "|^~\\"]
    for declared in declarations * 3:
        text = f"MSH{declared}{declared[0]}GAM"
        assert _outcome(er7._encoding, text) == _outcome(_encoding_as_before, text)
    info = er7._known_encoding.cache_info()
    assert len(declarations) <= er7.ENCODING_MEMO_SIZE and info.currsize == len(set(declarations))
    for i in range(3 * er7.ENCODING_MEMO_SIZE):  # a hostile feed: a new declaration per message
        er7._encoding(f"MSH|^~\\&{chr(0x2190 + i)}|GAM")  # arrows: printable, not alphanumeric
    assert er7._known_encoding.cache_info().currsize == er7.ENCODING_MEMO_SIZE
    before = er7._known_encoding.cache_info()
    long = "|^~\\&" + "#" * er7.ENCODING_MEMO_LONGEST
    assert er7._encoding(f"MSH{long}|GAM") == Encoding()
    assert er7._known_encoding.cache_info() == before  # neither looked up nor kept
    assert parse(f"MSH{long}|GAM|CH\rPID|1").encoding == Encoding()
