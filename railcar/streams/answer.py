"""The model's answer of a finished exchange, reassembled from the streamed chunks or the non-streaming body.

Input shapes: OpenAI ``chat.completion.chunk`` SSE ``data:`` payloads (``exchange.stream_data``) or a
``chat.completion`` body (``exchange.response_body``). Output: the dict :func:`reassemble` documents. Never raises
on bad upstream data: what cannot be read is left out.
"""

from __future__ import annotations

from typing import Any

import orjson

from railcar.codecs.chat_tools import ToolCallAssembler
from railcar.core.exchange import Exchange

__all__ = ["reassemble"]


def _empty() -> dict[str, Any]:
    return {"content": "", "tool_calls": [], "finish_reasons": [], "usage": None, "model": None, "id": None}


def reassemble(exchange: Exchange) -> dict[str, Any]:
    """The answer of ``exchange`` as ``{"content": str, "tool_calls": [{"id","name","arguments"}],
    "finish_reasons": [str], "usage": dict | None, "model": str | None, "id": str | None}``.

    Streaming: from the SSE ``data:`` payloads (OpenAI chat.completion.chunk: ``choices[].delta.content``,
    ``delta.tool_calls[]`` merged by ``index``, ``finish_reason``, a final ``usage``); non-JSON payloads and
    ``[DONE]`` are skipped. Non-streaming: ``choices[0].message`` of the body. Never raises on bad upstream data.
    """
    if exchange.stream_data:
        return _StreamAnswer(_parse_chunks(exchange.stream_data)).result()
    if exchange.response_body:
        return _from_body(exchange.response_body)
    return _empty()


def _parse_chunks(stream_data: list[bytes]) -> list[Any]:
    """The JSON values of the ``data:`` payloads that look like objects ([DONE] and comments are skipped)."""
    loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
    datas = [d for d in stream_data if d[:1] == b"{" or d.lstrip()[:1] == b"{"]
    try:  # one parse for the whole stream instead of one call per chunk (the well-formed case)
        return list(loads(b"[" + b",".join(datas) + b"]"))
    except JSONDecodeError:  # a bad chunk: parse one by one and skip it
        chunks = []
        for data in datas:
            try:
                chunks.append(loads(data))
            except JSONDecodeError:
                continue
        return chunks


class _StreamAnswer:
    """Folds the chunks of one stream (choice 0 only) into the answer dict."""

    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = [c for c in chunks if c.__class__ is dict]
        self.parts: list[str] = []
        self.calls = ToolCallAssembler()
        self.usage: dict[str, Any] | None = None
        self.finish: list[str] = []
        for chunk in self.chunks:
            for choice in chunk.get("choices") or ():
                if choice.__class__ is dict and choice.get("index", 0) == 0:
                    self._choice(choice)
            u = chunk.get("usage")
            if u.__class__ is dict:
                self.usage = u

    def _choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        if delta:
            content = delta.get("content")
            if content.__class__ is str:
                self.parts.append(content)
            tcs = delta.get("tool_calls")
            if tcs.__class__ is list:
                try:  # the same assembly the tool rails use (index-less entries included)
                    self.calls.feed(tcs)
                except ValueError:
                    pass  # a malformed entry: what came before it is kept
        fr = choice.get("finish_reason")
        if fr:
            self.finish = [fr]

    def _model_and_id(self) -> tuple[Any, Any]:
        """The last non-empty ``model`` and ``id``: read from the end."""
        model = rid = None
        for chunk in reversed(self.chunks):
            model = model or chunk.get("model") or None
            rid = rid or chunk.get("id") or None
            if model and rid:
                break
        return model, rid

    def result(self) -> dict[str, Any]:
        model, rid = self._model_and_id()
        tool_calls = [{"id": c.id or "", "name": c.name, "arguments": c.arguments}
                      for _, c in sorted(self.calls.calls.items())]
        return {"content": "".join(self.parts), "tool_calls": tool_calls, "finish_reasons": self.finish,
                "usage": self.usage, "model": model, "id": rid}


def _from_body(response_body: bytes) -> dict[str, Any]:
    out = _empty()
    try:
        body = orjson.loads(response_body)
    except orjson.JSONDecodeError:
        return out
    if not isinstance(body, dict):
        return out
    out["model"], out["id"] = body.get("model"), body.get("id")
    out["usage"] = body.get("usage") if isinstance(body.get("usage"), dict) else None
    choices = body.get("choices") or []
    if choices and isinstance(choices[0], dict):
        msg = choices[0].get("message") or {}
        out["content"] = msg.get("content") if isinstance(msg.get("content"), str) else ""
        out["tool_calls"] = [_body_tool_call(tc) for tc in msg.get("tool_calls") or () if isinstance(tc, dict)]
        if choices[0].get("finish_reason"):
            out["finish_reasons"] = [choices[0]["finish_reason"]]
    return out


def _body_tool_call(tc: dict[str, Any]) -> dict[str, Any]:
    fn = tc.get("function") or {}
    return {"id": tc.get("id", ""), "name": fn.get("name", ""), "arguments": fn.get("arguments", "")}
