"""The error tree and its one HTTP registry: every class answers, and the tree drawn in the docstring is the tree."""

from __future__ import annotations

import inspect
import re

import pytest

from gateway import errors
from gateway.api.errors import HTTP_ANSWERS, http_answer, outcome_of
from gateway.errors import GatewayError

#: FHIR R4 IssueType codes (http://hl7.org/fhir/R4/valueset-issue-type.html).
ISSUE_TYPES = frozenset(
    {
        "invalid",
        "structure",
        "required",
        "value",
        "invariant",
        "security",
        "login",
        "unknown",
        "expired",
        "forbidden",
        "suppressed",
        "processing",
        "not-supported",
        "duplicate",
        "multiple-matches",
        "not-found",
        "deleted",
        "too-long",
        "code-invalid",
        "extension",
        "too-costly",
        "business-rule",
        "conflict",
        "transient",
        "lock-error",
        "no-store",
        "exception",
        "timeout",
        "incomplete",
        "throttled",
        "informational",
    }
)
#: HL7 v2 table 0357 (message error condition codes) the gateway may put in an ERR segment.
HL7_ERROR_CODES = frozenset({"0", "100", "101", "102", "103", "200", "201", "202", "203", "204", "205", "206", "207"})
#: Errors that never answer a message: start-up failures and the HTTP-only branches.
NO_ACK = (errors.ConfigError, errors.FhirError, errors.OAuthError, errors.TransportError)


def _tree() -> list[type[GatewayError]]:
    found = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, GatewayError) and cls.__module__ == errors.__name__
    ]
    return sorted(found, key=lambda cls: cls.__name__)


TREE = _tree()


@pytest.mark.parametrize("kind", TREE, ids=lambda cls: cls.__name__)
def test_every_class_maps_to_a_status_and_an_issue_type(kind: type[GatewayError]) -> None:
    status, code = http_answer(kind)
    assert 400 <= status <= 599
    assert code in ISSUE_TYPES


@pytest.mark.parametrize("kind", [k for k in TREE if issubclass(k, errors.FhirError)], ids=lambda cls: cls.__name__)
def test_the_fhir_branch_has_a_row_per_class(kind: type[GatewayError]) -> None:
    """A FHIR error class exists to answer differently; one without its own row is a name, not a meaning."""
    assert kind in HTTP_ANSWERS


def test_codes_are_distinct_across_the_tree() -> None:
    slugs = [kind.slug for kind in TREE]
    assert len(slugs) == len(set(slugs)), sorted(s for s in slugs if slugs.count(s) > 1)


def test_the_registry_names_only_gateway_errors() -> None:
    assert set(HTTP_ANSWERS) <= set(TREE)


@pytest.mark.parametrize("kind", [k for k in TREE if not issubclass(k, NO_ACK)], ids=lambda cls: cls.__name__)
def test_message_errors_carry_an_hl7_error_code(kind: type[GatewayError]) -> None:
    assert kind.code in HL7_ERROR_CODES
    assert kind.ack_code in ("AE", "AR")


def test_lookup_follows_the_mro_like_starlette() -> None:
    class Narrower(errors.NotFoundError):
        pass

    assert http_answer(Narrower) == http_answer(errors.NotFoundError) == (404, "not-found")
    assert http_answer(errors.UnknownTypeError) == (404, "not-supported")
    with pytest.raises(TypeError):
        http_answer(ValueError)  # type: ignore[arg-type]


def test_the_outcome_carries_the_stable_code_and_the_location() -> None:
    status, body = outcome_of(errors.ProfileValueError("Subscription.end: no offset", location="Subscription.end"))
    issue = body["issue"][0]
    assert status == 422
    assert issue["code"] == "value"
    assert issue["details"]["coding"][0]["code"] == "profile-value"
    assert issue["expression"] == ["Subscription.end"]


def test_the_docstring_draws_the_whole_tree() -> None:
    """The tree in ``gateway/errors.py``'s docstring names every class, each under its real parent."""
    doc = errors.__doc__ or ""
    drawn = re.findall(r"^([│ ]*)(?:├── |└── )?(\w+Error)\b", doc, flags=re.MULTILINE)
    names = [name for _, name in drawn]
    assert sorted(names) == sorted(kind.__name__ for kind in TREE)
    parents: dict[int, str] = {}
    for indent, name in drawn:
        depth = len(indent) // 4 + (1 if name != "GatewayError" else 0)
        parents[depth] = name
        if depth:
            assert getattr(errors, name).__bases__[0].__name__ == parents[depth - 1], name
