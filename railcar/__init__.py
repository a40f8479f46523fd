"""Railcar: a streaming guard sidecar for LLM agents.

Layers, bottom to top (an import only ever goes down; ``tests/test_layers.py`` walks them):

- :mod:`railcar.core`: the contracts every room shares (the exchange and its outcome, the guard protocols, the
  OpenAI wire shapes, the generic config machinery). Imports nothing else from Railcar.
- :mod:`railcar.rails`: judgment (NeMo Guardrails adapters, streaming output rails, the hold-back, the detector
  catalog).
- :mod:`railcar.streams`: events (trace recording, OTLP, the Kafka producer and consumer group, findings, the
  security fileset). Uses the catalog of ``rails``.
- :mod:`railcar.sidecar`: transport (the aiohttp proxy, upstream client, SSE framing, headers, metrics). Knows
  nothing about what content is bad; it talks to a guard and to observers through the ``core`` protocols.
- :mod:`railcar.tools`, :mod:`railcar.webhook`: things that are not a room's concept (the replay upstream, the mock
  broker, the HTML report, the admission webhook).
- :mod:`railcar.settings`, :mod:`railcar.commands`, :mod:`railcar.cli`: the composition root, the only place that
  knows every room.
"""
