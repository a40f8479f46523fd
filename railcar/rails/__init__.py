"""Railcar ``rails``: judgment. NeMo Guardrails adapters (local IORails, remote ``/v1/checks``), the streaming
chunker with context carry-over, tool-call assembly, and the secret/PII detector catalog. No network I/O in the
detectors."""

import os

# nemoguardrails (0.24) posts usage statistics to an NVIDIA endpoint unless told not to; a sidecar that guards a pod's
# egress must not call home (nemoguardrails/telemetry.py `_is_usage_stats_enabled`). An operator can still set it to 0.
os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")
