"""Codecs: one per wire API (OpenAI Chat Completions, Responses, legacy Completions, Embeddings; Anthropic
Messages), mapping requests, answers and decisions between the API's wire form and what the rails see.

The contract is :class:`railcar.codecs.base.Codec`; :mod:`railcar.codecs.registry` finds a codec by name or route.
Imports :mod:`railcar.core` only.
"""

from railcar.codecs.base import Codec, Piece, RequestProblem, StreamState, ToolCall, Turn
from railcar.codecs.registry import CODECS, codec_for, route_codec

__all__ = ["CODECS", "Codec", "Piece", "RequestProblem", "StreamState", "ToolCall", "Turn", "codec_for",
           "route_codec"]
