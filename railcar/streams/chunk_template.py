"""Chat Completions chunks that differ only in their content string, read without parsing each one whole.

Most chunks of a stream are byte for byte the same but for ``delta.content``
(``{"id":…,"object":"chat.completion.chunk",…,"choices":[{"index":0,"delta":{"content":"<text>"},
"finish_reason":null}]}``). :func:`plain_chunks` parses payloads whole until one is *plain* (:func:`_is_plain`: it
tells the answer's fold nothing but one content string), takes it as the reference, cuts its bytes around the
content string into a prefix and a suffix, and reads every later payload with that prefix and suffix as the
reference with another content (a ``(reference, content)`` pair): only the bytes between are parsed, and only as one
JSON string (those with no quote inside all in one ``orjson.loads``). Any other payload is parsed whole. The result
is what parsing every payload gives; the recorder's fold (:mod:`railcar.streams.answer`) appends a pair's content
and is done with it, which halves the recorder's work on a 256-token stream.

Why it is exact: a payload that is the reference's prefix, then one JSON string token (checked by parsing those
bytes alone), then the reference's suffix is the reference document with that string in the place of its content, so
it parses to the reference with that content (the cut is proved once per reference, :func:`_cut`). A token decoded
in the batch has exactly two quotes, the first and the last byte, the last not after a backslash: nothing inside it
can close it, so the batch holds one string per token.
"""

from __future__ import annotations

from typing import Any

import orjson

from railcar.codecs.openai_chat import content_cut

__all__ = ["plain_chunks"]

_SKIPPED = object()  # a payload a whole parse leaves out
_TRIES = 4  # references in a row that read no payload: the stream varies per chunk, stop looking


def _is_plain(obj: Any) -> bool:
    """Whether the parsed chunk ``obj`` tells the answer's fold nothing but one content string of choice 0: one
    choice, index 0, no finish reason or legacy ``text``, a delta whose other fields are ``role`` or null, no usage
    and no error (ids, model and fields the fold does not read may be anything)."""
    if obj.__class__ is not dict or obj.get("usage") is not None or "error" in obj:
        return False
    choices = obj.get("choices")
    if choices.__class__ is not list or len(choices) != 1:
        return False
    c = choices[0]
    if c.__class__ is not dict or c.get("index", 0) != 0 or c.get("finish_reason") or "text" in c:
        return False
    d = c.get("delta")
    return (d.__class__ is dict and d.get("content").__class__ is str
            and all(v is None for k, v in d.items() if k != "content" and k != "role"))


def _cut(raw: bytes, obj: Any) -> tuple[bytes, bytes] | None:
    """``(prefix, suffix)`` around the content string of ``raw`` when its parse ``obj`` is plain and the cut is
    proved (:func:`railcar.codecs.openai_chat.content_cut`, the stream guard's frame template), else ``None``."""
    return content_cut(raw, obj) if _is_plain(obj) else None


def plain_chunks(datas: list[bytes]) -> list[dict[str, Any] | tuple[dict[str, Any], str]]:
    """The chunks of the ``data:`` payloads ``datas`` (``[DONE]`` already left out), in order: a dict for a payload
    parsed whole, a ``(reference, content)`` pair for a payload that is ``reference`` (a plain chunk parsed whole
    earlier, the same dict object) with that content. Payloads that are not JSON objects are left out, as a whole
    parse leaves them. The reference is the latest plain chunk parsed whole, so a stream that changes shape (a
    role chunk, then reasoning, then content) finds a new one at each change."""
    loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
    prefix = suffix = b""
    lp = ls = 0
    ref: dict[str, Any] | None = None
    tries = matched = 0  # references in a row that read no payload; payloads the current one read
    out: list[Any] = []
    batch: list[tuple[int, bytes, bytes]] = []  # (place in out, token, payload): tokens with no quote inside
    for raw in datas:
        n = len(raw)
        if ref is not None and n > lp + ls and raw.startswith(prefix) and raw.endswith(suffix):
            tok = raw[lp:n - ls]
            matched += 1
            if tok.count(b'"') == 2 and tok[0] == tok[-1] == 0x22 and tok[-2] != 0x5C:
                batch.append((len(out), tok, raw))  # one string token: nothing between its quotes can end it
                out.append(ref)
            else:
                out.append(_one(ref, tok, raw))
            continue
        try:
            whole = loads(raw)
        except JSONDecodeError:
            continue
        if whole.__class__ is not dict:
            continue
        out.append(whole)
        if tries < _TRIES and (cut := _cut(raw, whole)) is not None:
            tries = tries + 1 if ref is not None and not matched else 0
            ref, (prefix, suffix) = whole, cut
            lp, ls = len(prefix), len(suffix)
            matched = 0
    if batch:
        _decode(batch, out)
    return [c for c in out if c is not _SKIPPED]


def _decode(batch: list[tuple[int, bytes, bytes]], out: list[Any]) -> None:
    """Replace the reference at each batch place of ``out`` by ``(reference, content)``: all tokens in one
    ``orjson.loads``; when one of them is bad (an escape, a byte), each on its own, a bad one's payload parsed whole
    (or :data:`_SKIPPED`)."""
    loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
    try:
        texts = loads(b"[" + b",".join(tok for _, tok, _ in batch) + b"]")
    except JSONDecodeError:
        for i, tok, raw in batch:
            out[i] = _one(out[i], tok, raw)
        return
    for (i, _, _), text in zip(batch, texts):
        out[i] = (out[i], text)


def _one(ref: dict[str, Any], tok: bytes, raw: bytes) -> Any:
    """``(ref, the content string tok decodes to)``, else ``raw`` parsed whole, else :data:`_SKIPPED`."""
    try:
        v = orjson.loads(tok)
    except orjson.JSONDecodeError:
        v = None
    if v.__class__ is str:
        return ref, v
    try:
        whole = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _SKIPPED
    return whole if whole.__class__ is dict else _SKIPPED
