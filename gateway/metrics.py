"""Prometheus metrics (no labels that could carry PHI: transports, outcomes, topics only)."""

from __future__ import annotations

from prometheus_client import Counter

MESSAGES = Counter("gateway_messages_total", "HL7 v2 messages acknowledged", ["transport", "outcome"])
