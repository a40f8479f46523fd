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

__all__ = ["plain_chunks"]

_KEY = b'"content":"'
_SKIPPED = object()  # a payload a whole parse leaves out


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


def _string_end(raw: bytes, start: int) -> int:
    """The index after the JSON string token opening at ``raw[start]`` (a ``"``); -1 when it does not close."""
    i = start + 1
    while (j := raw.find(b'"', i)) >= 0:
        k = j
        while raw[k - 1] == 0x5C:  # a backslash: count the run, an odd run escapes the quote
            k -= 1
        if (j - k) % 2 == 0:
            return j + 1
        i = j + 1
    return -1


_PROBE = "\x00railcar-cut\x00"
_PROBE_TOKEN = b'"\\u0000railcar-cut\\u0000"'
_TRIES = 4  # references found in a row that nothing matched: the stream varies per chunk, stop looking


def _cut(raw: bytes, obj: Any) -> tuple[bytes, bytes] | None:
    """``(prefix, suffix)`` around the content string of ``raw`` when its parse ``obj`` is plain and that string
    is the content a parser keeps, else ``None``.

    The first ``"content":"`` need not be it: a key spelled with an escape (``"\\u0063ontent"``) later in the
    object wins (the last duplicate counts), and the same bytes may sit under another key (``logprobs``). So the
    cut is proved once, by parsing the prefix, a probe string and the suffix: it must give the probe as content."""
    if (at := raw.find(_KEY)) < 0 or not _is_plain(obj):
        return None
    start = at + len(_KEY) - 1
    end = _string_end(raw, start)
    if end < 0:
        return None
    prefix, suffix = raw[:start], raw[end:]
    try:
        probe = orjson.loads(prefix + _PROBE_TOKEN + suffix)
    except orjson.JSONDecodeError:
        return None
    return (prefix, suffix) if _is_plain(probe) and probe["choices"][0]["delta"]["content"] == _PROBE else None


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
