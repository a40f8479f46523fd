"""Railcar ``rails``: judgment. NeMo Guardrails adapters (local IORails, remote ``/v1/checks``), the streaming
chunker with context carry-over, tool-call assembly, and the secret/PII detector catalog. No network I/O in the
detectors."""
