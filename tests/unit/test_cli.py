"""The command line as an operator meets it: --version, one-line start-up errors, inputs, exit codes."""

from __future__ import annotations

import io
import shutil
import socket
from pathlib import Path

import pytest

from gateway import __version__, cli
from tests.conftest import MAPPINGS
from tests.messages import Adt


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"gateway {__version__}"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nonsense", "is not a database URL"),
        ("mysql+nodriver://a/b", "unknown database driver: mysql+nodriver"),
        (
            "postgresql+psycopg://postgres:secret@127.0.0.1:1/x",
            "database unreachable: postgresql+psycopg://postgres:***@",
        ),
    ],
)
def test_bad_database_urls_fail_in_one_line(capsys: pytest.CaptureFixture[str], url: str, expected: str) -> None:
    code, _out, err = run(capsys, "migrate", "--database-url", url)
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "secret" not in err


def test_a_mistyped_sqlite_directory_is_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "var"))
    typo = tmp_path / "dta" / "gateway.db"
    code, _out, err = run(capsys, "migrate", "--database-url", f"sqlite:///{typo}")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    assert not typo.parent.exists()
    inside = tmp_path / "var" / "stores" / "gateway.db"
    assert run(capsys, "migrate", "--database-url", f"sqlite:///{inside}")[0] == 0
    assert inside.exists()  # inside the data directory, directories are made


def test_busy_ports_fail_in_one_line_before_anything_starts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        store = f"sqlite:///{tmp_path / 'g.db'}"
        for flags, what in (
            (["--http-port", str(port), "--mllp-port", "0"], "HTTP"),
            (["--mllp-port", str(port), "--http-port", "0"], "MLLP"),
        ):
            code, out, err = run(capsys, "serve", "--database-url", store, *flags)
            assert code == 2 and f"{what} port 127.0.0.1:{port} is not available" in err
            assert "startup complete" not in out + err and "Traceback" not in err
    assert not (tmp_path / "g.db").exists()  # nothing was opened


def test_unreadable_mappings_fail_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _out, err = run(capsys, "check-mappings", "--mappings-dir", str(tmp_path / "none"))
    assert code == 2 and "mappings directory not found" in err and len(err.strip().splitlines()) == 1
    copy = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, copy)
    (copy / "messages" / "ADT.yaml").write_text("events: [\n", encoding="utf-8")
    argv = ["--mappings-dir", str(copy), "--database-url", "sqlite://", "--http-port", "0", "--mllp-port", "0"]
    code, _out, err = run(capsys, "serve", *argv)
    assert code == 2 and "ADT.yaml: not valid YAML" in err and len(err.strip().splitlines()) == 1


def test_convert_reads_stdin_and_directories_and_refuses_missing_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _out, err = run(capsys, "convert", "--mappings-dir", str(MAPPINGS), str(tmp_path / "missing.hl7"))
    assert (code, err.strip()) == (2, f"gateway: no such file: {tmp_path / 'missing.hl7'}")
    code, _out, err = run(capsys, "convert", "--mappings-dir", str(MAPPINGS), str(tmp_path))
    assert code == 2 and "without *.hl7 files" in err
    (tmp_path / "a.hl7").write_bytes(Adt().bytes())
    code, out, err = run(capsys, "convert", "--mappings-dir", str(MAPPINGS), str(tmp_path))
    assert code == 0 and f"=== {tmp_path / 'a.hl7'}: AA" in out
    assert "converted: 1 message(s) (AA=1)" in err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(Adt().bytes())))
    code, out, _err = run(capsys, "convert", "--mappings-dir", str(MAPPINGS), "-")
    assert code == 0 and "=== <stdin>: AA" in out and '"resourceType": "Patient"' in out


def test_send_to_nobody_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "a.hl7").write_bytes(Adt().bytes())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _out, err = run(capsys, "send", "--port", str(port), "--timeout", "2", str(tmp_path / "a.hl7"))
    assert code == 3 and f"gateway: MLLP 127.0.0.1:{port}:" in err


def test_log_settings_are_checked(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "xml")
    code, _out, err = run(capsys, "check-mappings", "--mappings-dir", str(MAPPINGS))
    assert code == 2 and "format 'xml'" in err
