"""ANS NdE 3.0.0 pieces without a store: flux 1 parsing, flux 4 orders, the 201 rule, and the constraint
checker the other tests rely on (the guide's examples pass it; each broken rule fails it)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.api.errors import http_status
from gateway.db.repo import SubscriptionRecord
from gateway.errors import FhirError
from gateway.mapping.engine import Engine
from gateway.subscriptions.channels import DeliveryResult
from gateway.subscriptions.nde_order import judge, notification_order, target
from gateway.subscriptions.nde_subscription import is_nde, parse_nde
from gateway.subscriptions.selection import selected_patients
from tests import nde_constraints
from tests.nde_constraints import SD

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "fixtures" / "nde"
TABLES = Engine.from_directory(ROOT / "mappings").tables
KNOWN = TABLES.codes["TRE_R254_TypeEvenement"]
EMITTED = frozenset(r.target_code for r in TABLES.codes["ADT_to_TRE_R254"].values())
INS = "urn:oid:1.2.250.1.213.1.4.8"
JSON = dict[str, Any]


def example(name: str) -> JSON:
    data: JSON = json.loads(next(EXAMPLES.glob(f"{name}_*.json")).read_text(encoding="utf-8"))
    return data


def ours() -> JSON:
    """The guide's sub1 for a patient we know by INS, on admissions and discharges, through a rest-hook."""
    sub = example("Exemple1")
    sub["contained"][0]["identifier"] = [{"system": INS, "value": "1800175123456"}]
    sub["criteria"] = "CommunicationRequest?event-type=ADM,SOR"
    sub.pop("end")
    sub["channel"] = {"type": "rest-hook", "endpoint": "https://platform.example/fhir"}
    return sub


# -- the checker on the guide's own examples -----------------------------------------------------------


@pytest.mark.parametrize("name", ["Exemple1", "Exemple3", "Exemple4"])
def test_the_guide_examples_meet_their_profiles(name: str) -> None:
    nde_constraints.check(example(name))


def _drop_ext(resource: JSON, name: str) -> None:
    resource["extension"] = [e for e in resource["extension"] if e["url"] != f"{SD}/{name}"]


BREAKS = {
    "sub: no Start": ("Exemple1", lambda r: _drop_ext(r, "start"), "extension[start] is 1..1"),
    "sub: Subject not contained": (
        "Exemple1",
        lambda r: r["extension"][2].update(valueReference={"reference": "Patient/x"}),
        "not a reference to a contained",
    ),
    "sub: Declarant a Patient": (
        "Exemple1",
        lambda r: r["extension"][3].update(valueReference={"reference": "#pat1"}),
        "declarant targets a Patient",
    ),
    "sub: event type outside TRE_R254": (
        "Exemple1",
        lambda r: r["extension"][5]["valueCodeableConcept"]["coding"][0].update(code="XXX"),
        "no TRE_R254",
    ),
    "decl: no EventTime": ("Exemple3", lambda r: _drop_ext(r, "event-time"), "extension[event-time] is 1..1"),
    "decl: two payloads": ("Exemple3", lambda r: r["payload"].append({"contentString": "x"}), "payload is 1..1"),
    "decl: about and subject": (
        "Exemple3",
        lambda r: r.update(about=[{"reference": "#pat1"}]),
        "event-subject",
    ),
    "decl: requester a Patient": ("Exemple3", lambda r: r.update(requester={"reference": "#pat1"}), "requester"),
    "decl: contained without FR Core profile": (
        "Exemple3",
        lambda r: r["contained"][1].pop("meta"),
        "claims no FR Core profile",
    ),
    "order: no basedOn": ("Exemple4", lambda r: r.pop("basedOn"), "basedOn is 1..1"),
    "order: no medium": ("Exemple4", lambda r: r.pop("medium"), "medium is 1..1"),
    "order: no RecipientEndpoint": (
        "Exemple4",
        lambda r: r["recipient"][0].pop("extension"),
        "recipient.extension[recipient-endpoint] is 1..1",
    ),
    "order: two event types": (
        "Exemple4",
        lambda r: r["extension"].append(copy.deepcopy(r["extension"][2])),
        "extension[event-type] is 1..1",
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_the_checker_catches_each_broken_rule(case: str) -> None:
    name, breaking, fragment = BREAKS[case]
    resource = example(name)
    breaking(resource)
    with pytest.raises(AssertionError, match="NdE constraint") as info:
        nde_constraints.check(resource)
    assert fragment in str(info.value), str(info.value)


# -- flux 1: what a subscription selects, and each refusal naming its element ---------------------------


def test_an_nde_subscription_selects_its_event_types_and_its_patient_by_identifier() -> None:
    parsed = parse_nde(ours(), known=KNOWN, emitted=EMITTED)
    assert parsed.event_codes == ("ADM", "SOR")
    assert parsed.filters == [
        {"param": "event-type", "value": "ADM,SOR"},
        {"param": "patient.identifier", "value": f"{INS}|1800175123456"},
    ]
    assert parsed.start == datetime.fromisoformat("2019-02-01T01:30:00+01:00") and parsed.end is None


def test_without_event_type_in_the_criteria_the_event_type_extension_decides() -> None:
    sub = ours()
    sub["criteria"] = f"CommunicationRequest?subject.identifier={INS}|1800175123456"
    parsed = parse_nde(sub, known=KNOWN, emitted=EMITTED)
    assert parsed.event_codes == ("SOR",)
    assert {"param": "patient.identifier", "value": f"{INS}|1800175123456"} in parsed.filters


def test_the_guide_example_is_recognised_as_nde_and_backport_ones_are_not() -> None:
    assert is_nde(example("Exemple1"))
    assert not is_nde({"resourceType": "Subscription", "criteria": "https://gw.example/SubscriptionTopic/x"})


REFUSALS = {
    "no contained": (lambda s: s.pop("contained"), "Subscription.contained"),
    "no Start": (lambda s: _drop_ext(s, "start"), "Subscription.extension[Start]"),
    "Start without offset": (
        lambda s: s["extension"][1].update(valueDateTime="2019-02-01T01:30:00"),
        "Subscription.extension[Start].valueDateTime",
    ),
    "no Subject": (lambda s: _drop_ext(s, "subject"), "Subscription.extension[Subject]"),
    "Subject not contained": (
        lambda s: s["extension"][2].update(valueReference={"reference": "#nobody"}),
        "Subscription.extension[Subject].valueReference",
    ),
    "Declarant a Patient": (
        lambda s: s["extension"][3].update(valueReference={"reference": "#pat1"}),
        "Subscription.extension[Declarant].valueReference",
    ),
    "no Subscriber": (lambda s: _drop_ext(s, "subscriber"), "Subscription.extension[Subscriber]"),
    "no EventType": (lambda s: _drop_ext(s, "event-type"), "Subscription.extension[EventType]"),
    "EventType not TRE_R254": (
        lambda s: s["extension"][5]["valueCodeableConcept"]["coding"][0].update(code="ZZZ"),
        "Subscription.extension[EventType].valueCodeableConcept",
    ),
    "criteria on Encounter": (lambda s: s.update(criteria="Encounter?status=finished"), "Subscription.criteria"),
    "criteria unknown parameter": (
        lambda s: s.update(criteria="CommunicationRequest?priority=urgent"),
        "Subscription.criteria",
    ),
    "event type never emitted": (lambda s: s.update(criteria="CommunicationRequest?event-type=DOC"), "DOC"),
    "identifier without system": (
        lambda s: s["contained"][0].update(identifier=[{"value": "123"}]),
        "Subscription.contained[Patient].identifier[0].system",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_missing_or_malformed_part_is_a_422_naming_the_element(case: str) -> None:
    breaking, element = REFUSALS[case]
    sub = ours()
    breaking(sub)
    with pytest.raises(FhirError) as info:
        parse_nde(sub, known=KNOWN, emitted=EMITTED)
    assert http_status(info.value) == 422
    assert element in info.value.message and info.value.location


# -- flux 4: the order ------------------------------------------------------------------------------------


def declaration() -> JSON:
    decl = example("Exemple3")
    decl["encounter"] = {"reference": "Encounter/stay1"}
    decl["authoredOn"] = "2019-01-01T00:30:00+00:00"
    return decl


def order_for(subscription: JSON, **kw: Any) -> JSON:
    return notification_order(
        declaration=kw.get("decl", declaration()),
        subscription=subscription,
        subscription_url="https://gw.example/fhir/Subscription/s1",
        base_url="https://gw.example/fhir",
        event_number=7,
        emitted_at=datetime(2019, 1, 1, 2, 0, tzinfo=UTC),
        medium=TABLES.codes["ChannelType_to_Medium"]["rest-hook"].coding(),
    )


def test_an_order_meets_its_profile_and_names_the_subscriber_as_recipient() -> None:
    order = order_for(ours())
    nde_constraints.check(order)
    assert order["basedOn"] == [{"reference": "https://gw.example/fhir/Subscription/s1"}]
    (recipient,) = order["recipient"]
    assert recipient["extension"][0]["valueUrl"] == "https://platform.example/fhir"
    contained = {c["id"]: c for c in order["contained"]}
    assert contained[recipient["reference"][1:]]["identifier"][0]["value"] == "801234567897"  # pract1
    urls = [e["url"].rsplit("/", 1)[-1] for e in order["extension"]]
    assert urls == ["event-type", "event-time", "event-emission-time"]
    assert order["identifier"][0]["value"] == "s1:7"
    assert order["encounter"] == {"reference": "https://gw.example/fhir/Encounter/stay1"}
    assert order == order_for(ours()), "a retry sends the very same order"


def test_a_subscriber_who_is_the_patient_is_the_orders_subject() -> None:
    sub = ours()
    sub["extension"][4]["valueReference"] = {"reference": "#pat1"}
    order = order_for(sub)
    nde_constraints.check(order)
    assert order["recipient"][0]["reference"] == order["subject"]["reference"]
    assert len(order["contained"]) == 2  # nothing added: "aucune" when the recipient is the subject


def test_a_revoked_declaration_gives_a_revoked_order() -> None:
    decl = declaration()
    decl["status"] = "revoked"
    order = order_for(ours(), decl=decl)
    nde_constraints.check(order)
    assert order["status"] == "revoked"


def _record(dialect: str, channel_type: str = "rest-hook") -> SubscriptionRecord:
    return SubscriptionRecord(
        id="s1",
        status="active",
        topic="t",
        endpoint="https://platform.example/fhir/",
        channel_type=channel_type,
        payload_content="id-only",
        headers=[],
        filters=[],
        secret="x" * 16,
        events_since_start=0,
        error=None,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        dialect=dialect,
    )


def test_orders_go_to_the_notification_managers_communication_request_endpoint() -> None:
    assert target(_record("nde")) == "https://platform.example/fhir/CommunicationRequest"
    assert target(_record("backport")) == "https://platform.example/fhir/"
    assert target(_record("nde", "email")) == "https://platform.example/fhir/"


@pytest.mark.parametrize(("status", "ok"), [(201, True), (200, False), (204, False), (202, False)])
def test_only_201_created_delivers_an_order(status: int, ok: bool) -> None:
    result = judge(_record("nde"), DeliveryResult(ok=True, status_code=status, error=None, retryable=False))
    assert result.ok is ok
    if not ok:
        assert result.retryable and str(status) in str(result.error)
    backport = judge(_record("backport"), DeliveryResult(ok=True, status_code=status, error=None, retryable=False))
    assert backport.ok  # Backport keeps "any 2xx"


# -- which patients a subscription selects (for the authorization policy) ------------------------------


def test_selected_patients_of_an_nde_and_a_backport_subscription() -> None:
    nde = selected_patients(parse_nde(ours(), known=KNOWN, emitted=EMITTED).filters)
    assert nde.identifiers == (((INS, "1800175123456"),),) and not nde.everyone
    assert nde.indirect == ("event-type",)
    backport = selected_patients([{"param": "patient", "value": "p1"}, {"param": "class", "value": "IMP"}])
    assert backport.patients == ("Patient/p1",) and backport.indirect == ("class",)
    assert selected_patients([{"param": "care-team-member", "value": "123"}]).everyone
    nameless = example("Exemple1")  # the guide's Subject has no identifier
    selection = selected_patients(parse_nde(nameless, known=KNOWN, emitted=EMITTED).filters)
    assert selection.identifiers == ((),)  # one group with no identifier: nobody matches it
