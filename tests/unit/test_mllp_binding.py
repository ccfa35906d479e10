"""#13: which facilities a plain MLLP peer may claim: loopback and trusted networks unchecked, others none."""

from __future__ import annotations

from typing import Any, cast

from gateway.auth.mllp import NOTHING, MllpBinding, common_name
from gateway.config import Settings
from gateway.hl7.mllp import Peer


class _Gate:
    def __init__(self, on: bool) -> None:
        self.on = on

    def enabled(self) -> bool:
        return self.on


def _binding(*, on: bool = True) -> MllpBinding:
    settings = Settings(database_url="sqlite://", mllp_trusted_networks=["10.1.2.0/24"])
    return MllpBinding(cast(Any, None), settings, cast(Any, _Gate(on)))


def test_plain_mllp_is_for_loopback_and_trusted_networks() -> None:
    binding = _binding()
    assert binding.facilities(Peer("127.0.0.1", None)) is None
    assert binding.facilities(Peer("::1", None)) is None
    assert binding.facilities(Peer("10.1.2.9", None)) is None
    assert binding.facilities(Peer("192.0.2.7", None)) == NOTHING
    assert binding.facilities(Peer("not-an-address", None)) == NOTHING


def test_nothing_is_checked_in_the_local_mode() -> None:
    assert _binding(on=False).facilities(Peer("192.0.2.7", None)) is None


def test_common_name_of_a_peer_certificate() -> None:
    cert = {"subject": ((("countryName", "FR"),), (("commonName", "chu-x"),))}
    assert common_name(cert) == "chu-x"
    assert common_name({"subject": ()}) is None
