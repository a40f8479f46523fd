"""Railcar ``core``: the contracts every room shares. Imports nothing else from Railcar.

:mod:`~railcar.core.guard` (the exchange, its outcome, the guard / stream guard / sink / observer protocols),
:mod:`~railcar.core.wire` (the OpenAI wire shapes), :mod:`~railcar.core.config` (the generic config machinery).
"""
