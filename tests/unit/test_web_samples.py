"""The sandbox samples: one per trigger of the event table, each accepted cleanly by the real pipeline."""

from __future__ import annotations

from gateway.mapping.engine import Engine
from gateway.web.samples import build_samples
from gateway.web.trial import run_trial


def test_every_trigger_the_tables_handle_has_a_sample(mapping_engine: Engine) -> None:
    samples = build_samples(mapping_engine.tables)
    assert [s.trigger for s in samples] == list(mapping_engine.tables.events)
    assert len({s.title for s in samples}) == len(samples)
    for sample in samples:
        assert f"ADT^{sample.trigger}^" in sample.messages[-1].split("\r")[0]


def test_every_sample_is_accepted_without_a_warning_and_produces_resources(mapping_engine: Engine) -> None:
    for sample in build_samples(mapping_engine.tables):
        trial = run_trial((m.encode() for m in sample.messages), engine=mapping_engine, exhausted=lambda: False)
        assert [s.code for s in trial.steps] == ["AA"] * len(sample.messages), sample.title
        assert [i.text for s in trial.steps for i in s.issues] == [], sample.title
        assert any(r["resourceType"] == "Patient" for r in trial.resources()), sample.title


def test_the_text_area_form_separates_messages_with_a_blank_line(mapping_engine: Engine) -> None:
    cancel = next(s for s in build_samples(mapping_engine.tables) if s.trigger == "A11")
    assert cancel.text.count("\n\nMSH|") == len(cancel.messages) - 1
    assert "\r" not in cancel.text


def test_control_ids_are_unique_across_samples(mapping_engine: Engine) -> None:
    ids = [m.split("\r")[0].split("|")[9] for s in build_samples(mapping_engine.tables) for m in s.messages]
    assert len(ids) == len(set(ids))
