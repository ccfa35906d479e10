"""The session store: absolute lifetime, sign-out, bounded size; the sign-in form's signed nonce."""

from __future__ import annotations

import pytest

from gateway.auth import sessions
from gateway.auth.sessions import SessionStore, csrf_ok, parse_form
from gateway.web.signin import safe_next


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lives_its_lifetime_and_no_longer() -> None:
    clock = Clock()
    store = SessionStore(lifetime=60, clock=clock)
    session = store.open(client_id="c1", name="ops", kind="operator")
    assert store.get(session.id) == session
    clock.now += 59
    assert store.get(session.id) == session  # not sliding: reading it does not extend it
    clock.now += 1
    assert store.get(session.id) is None
    assert store.get("") is None and store.get(None) is None


def test_sign_out_ends_it_and_ids_and_tokens_are_unguessable() -> None:
    store = SessionStore(lifetime=60)
    one, two = (store.open(client_id="c", name="n", kind="operator") for _ in range(2))
    assert one.id != two.id and one.csrf != two.csrf and len(one.id) >= 43
    store.close(one.id)
    assert store.get(one.id) is None and store.get(two.id) == two
    assert csrf_ok(two, two.csrf) and not csrf_ok(two, one.csrf) and not csrf_ok(two, None) and not csrf_ok(two, "")


def test_the_store_forgets_the_oldest_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 3)
    store = SessionStore(lifetime=60)
    opened = [store.open(client_id=str(n), name="n", kind="operator") for n in range(4)]
    assert store.get(opened[0].id) is None and all(store.get(s.id) for s in opened[1:])


def test_the_sign_in_form_token_names_its_nonce_and_comes_from_this_store() -> None:
    store, other = SessionStore(lifetime=60), SessionStore(lifetime=60)
    nonce, token = store.sign_in_form()
    assert store.sign_in_form_ok(token, nonce)
    assert not store.sign_in_form_ok(token, None) and not store.sign_in_form_ok(token, "another-nonce")
    assert not other.sign_in_form_ok(token, nonce)  # another key (another process)
    assert not store.sign_in_form_ok(token + "x", nonce)


def test_forms_and_next_paths() -> None:
    assert parse_form("application/x-www-form-urlencoded; charset=utf-8", b"a=1&b=") == {"a": "1", "b": ""}
    assert parse_form("multipart/form-data", b"a=1") == {}
    assert parse_form("application/x-www-form-urlencoded", b"\xff=1") == {}
    assert safe_next("/console/messages?outcome=AR") == "/console/messages?outcome=AR"
    for bad in ("", None, "https://evil.test", "//evil.test", "/\\evil.test", "/\t/evil.test", "/é"):
        assert safe_next(bad) == "/console/messages"
