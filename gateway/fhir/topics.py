"""Subscription topics as FHIR R4 ``Basic`` resources, the Backport IG's representation of R5 SubscriptionTopic.

Topics are code, not stored data: the resources are built from ``gateway.subscriptions.topics.TOPICS``.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.canonical import FHIR_CORE_SD, TRE_R254_SYSTEM
from gateway.subscriptions.topics import TOPICS, Topic

R5_EXT = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic"
JSON = dict[str, Any]


def topic_resource(topic: Topic) -> JSON:
    trigger: JSON = {
        "url": f"{R5_EXT}.resourceTrigger",
        "extension": [
            {"url": "description", "valueMarkdown": topic.description},
            {"url": "resource", "valueUri": f"{FHIR_CORE_SD}/{topic.resource}"},
            {"url": "supportedInteraction", "valueCode": "create"},
            {"url": "supportedInteraction", "valueCode": "update"},
        ],
    }
    extensions: list[JSON] = [
        {"url": f"{R5_EXT}.url", "valueUri": topic.url},
        {"url": f"{R5_EXT}.version", "valueString": __version__},
        {"url": f"{R5_EXT}.title", "valueString": topic.title},
        {"url": f"{R5_EXT}.status", "valueCode": "active"},
        {"url": f"{R5_EXT}.description", "valueMarkdown": topic.description},
        trigger,
    ]
    if topic.event_code:
        extensions.append(
            {
                "url": f"{R5_EXT}.eventTrigger",
                "extension": [
                    {"url": "description", "valueMarkdown": f"ANS NdE event {topic.event_code}"},
                    {
                        "url": "event",
                        "valueCodeableConcept": {
                            "coding": [
                                {
                                    "system": TRE_R254_SYSTEM,
                                    "code": topic.event_code,
                                }
                            ]
                        },
                    },
                    {"url": "resource", "valueUri": f"{FHIR_CORE_SD}/{topic.resource}"},
                ],
            }
        )
    return {
        "resourceType": "Basic",
        "id": topic.code,
        "extension": extensions,
        "code": {"coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]},
    }


def topic_resources() -> list[JSON]:
    return [topic_resource(t) for t in TOPICS]
