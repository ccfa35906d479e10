"""The canonical base of everything this gateway defines (topics, extensions, code and identifier systems).

``.example`` is reserved (RFC 2606): a deployment that publishes its own definitions changes it here.
"""

CANONICAL_BASE = "https://gateway.e-parcours.example/fhir"
