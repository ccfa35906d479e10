"""A small builder for test ADT messages with PAM-FR field positions (fictional patients and hospital)."""

from __future__ import annotations

from dataclasses import dataclass, field

RPPS = "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO"
IPP_AUTH = "CH-TEST&1.2.250.1.999.9.1&ISO"
VISIT_AUTH = "CH-TEST&1.2.250.1.999.9.2&ISO"
IPP_SYSTEM = "urn:oid:1.2.250.1.999.9.1"
VISIT_SYSTEM = "urn:oid:1.2.250.1.999.9.2"


@dataclass
class Adt:
    """Fields that tests vary; ``build()`` lays them out at their HL7/PAM-FR positions."""

    trigger: str = "A01"
    control_id: str = "MSG-1"
    ipp: str = "100001"
    visit: str = "V-5001"
    movement: str = "MVT-1"
    action: str = "INSERT"
    original_trigger: str = ""
    event_time: str = "20260301080000"
    patient_class: str = "I"
    family: str = "TESTEUR"
    given: str = "ALICE"
    birth_date: str = "19800101"
    sex: str = "F"
    reliability: str = "PROV"
    ins: str = ""
    discharge_time: str = ""
    disposition: str = ""
    sender: str = "GAM-TEST"
    facility: str = "CH-TEST"
    message_type: str = "ADT"
    charset: str = "UNICODE UTF-8"
    attending: str = "10001234567^MEDECIN^JEAN^^^DR^^^" + RPPS + "^D^^^RPPS"
    extra_segments: list[str] = field(default_factory=list)
    with_zbe: bool = True

    def build(self) -> str:
        pid3 = f"{self.ipp}^^^{IPP_AUTH}^PI"
        if self.ins:
            pid3 += f"~{self.ins}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
        pid = [
            "PID",
            "1",
            "",
            pid3,
            "",
            f"{self.family}^{self.given}^{self.given}^^^^L",
            "",
            self.birth_date,
            self.sex,
        ] + [""] * 24
        pid[32] = self.reliability
        pv1 = ["PV1", "1", self.patient_class, "MED^101^1^CH-TEST"] + [""] * 42
        pv1[7] = self.attending
        pv1[19] = f"{self.visit}^^^{VISIT_AUTH}^VN"
        pv1[36] = self.disposition
        pv1[45] = self.discharge_time
        segments = [
            f"MSH|^~\\&|{self.sender}|{self.facility}|GATEWAY|ARS|{self.event_time}||"
            f"{self.message_type}^{self.trigger}^ADT_A01|{self.control_id}|P|2.5^FRA^2.11|||||FRA|{self.charset}",
            f"EVN||{self.event_time}||||{self.event_time}",
            "|".join(pid),
            "|".join(pv1).rstrip("|"),
        ]
        if self.with_zbe:
            segments.append(
                f"ZBE|{self.movement}^CH-TEST^1.2.250.1.999.9.3^ISO|{self.event_time}||{self.action}|N|"
                f"{self.original_trigger}|Médecine^^^^^{IPP_AUTH}^UF^^^3001||HMS"
            )
        segments += self.extra_segments
        return "\r".join(segments) + "\r"

    def bytes(self) -> bytes:
        return self.build().encode("utf-8")
