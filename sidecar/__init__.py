"""Railcar ``sidecar``: transport. HTTP server, upstream client, SSE framing, headers, config, CLI, lifecycle.

It knows nothing about what content is bad: it calls ``rails`` for judgment and hands finished records to
``streams`` (see ``../shared/DESIGN.md``).
"""
