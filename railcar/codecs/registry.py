"""The codecs by name and by route: :data:`CODECS` and :func:`codec_for`.

Routes are canonical (``/v1/chat/completions``...): the caller normalises the request path first (issue 13 item 1:
percent-decoding, dot segments, duplicate and trailing slashes) and passes the result here; anything else is no
codec's route.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .anthropic_messages import AnthropicMessagesCodec
from .base import Codec
from .embeddings import EmbeddingsCodec
from .openai_chat import OpenAIChatCodec
from .openai_completions import OpenAICompletionsCodec
from .openai_responses import OpenAIResponsesCodec

__all__ = ["CODECS", "codec_for", "route_codec"]

CODECS: Mapping[str, Codec] = MappingProxyType({c.name: c for c in (
    OpenAIChatCodec(), OpenAIResponsesCodec(), AnthropicMessagesCodec(), OpenAICompletionsCodec(),
    EmbeddingsCodec())})

_BY_PATH: Mapping[str, Codec] = MappingProxyType({c.path: c for c in CODECS.values()})


def route_codec(path: str) -> Codec | None:
    """The codec whose canonical route is exactly ``path`` (any method), or ``None``."""
    return _BY_PATH.get(path)


def codec_for(method: str, path: str) -> Codec | None:
    """The codec serving ``method`` (case-insensitive) on the canonical ``path``, or ``None`` (a codec route asked
    with another method is ``None`` too: use :func:`route_codec` to tell a 405 from a 404)."""
    codec = _BY_PATH.get(path)
    return codec if codec is not None and codec.method == method.upper() else None
