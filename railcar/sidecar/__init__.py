"""Railcar ``sidecar``: transport. HTTP server, upstream client, SSE framing, headers, metrics.

It knows nothing about what content is bad: it calls a :class:`railcar.core.guard.Guard` for judgment and hands
finished exchanges to :class:`railcar.core.guard.ExchangeObserver` s (see ``../shared/DESIGN.md``).
"""
