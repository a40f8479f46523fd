"""A local model upstream for tests, the demo and benchmarks (loopback only, no network), speaking every API Railcar
guards: ``POST /v1/chat/completions``, ``/v1/responses``, ``/v1/messages`` (Anthropic), ``/v1/completions`` and
``/v1/embeddings``.

Two modes in one server:

- **Replay**: answers a model call with a recorded interaction (``records``, the JSONL of
  ``../shared/fixtures/recorded``: ``chat_completions.jsonl``, ``responses.jsonl``, ``anthropic_messages.jsonl``, or
  the bundled ``railcar/tools/demo_data/*.jsonl``; fields ``id``, ``api`` (absent: ``openai_chat``), ``request``,
  ``status``, ``response_headers``, ``response_body``): the recorded status, the recorded ``Content-Type`` verbatim
  and the body byte for byte. SSE bodies (``event:`` lines, comments and padding included) are written one event per
  transport write (``split="event"``), or in fixed-size pieces (``split=<int>`` bytes, to exercise splitters), or
  whole (``split=None``). A request is matched to a record of the route's API (the codec name of the path:
  ``openai_chat``, ``openai_responses``, ``anthropic_messages``, ``openai_completions``, ``embeddings``) by its JSON
  body (canonical: keys sorted; the first record wins for duplicates); the ``x-replay-id: <record id>`` header
  overrides (any API's record). No match: 404 in the API's error shape (Anthropic's ``{"type": "error", ...}`` on
  ``/v1/messages``), unless synthetic mode is on.
- **Synthetic** (:mod:`railcar.tools.synthetic`, frames in the route's API shape, built once per script): a stream of
  ``tokens`` deltas (``"tok "`` each, ``delay_s`` apart, then the API's closing events) for load tests and
  benchmarks. Used for unmatched requests when ``synthetic=True``, or per request with ``x-synthetic-tokens: N``
  (and optionally ``x-synthetic-delay-ms``); a request without ``"stream": true`` gets the whole answer with the same
  text. With a ``text`` (constructor, ``--text``) or per request ``x-synthetic-text: <text>`` (ASCII, as HTTP
  headers are), the answer carries that text instead, split into deltas of ``x-synthetic-chunk-chars`` (default
  ``chunk_chars``, 4) characters: e.g. a planted key in the middle of prose, to see whether it reaches a client. With
  ``x-synthetic-tool: <name>`` the answer is a call of tool ``<name>`` whose JSON arguments carry the text
  (:func:`railcar.tools.synthetic.tool_arguments`), streamed as argument deltas (Chat ``tool_calls`` arguments,
  Responses ``response.function_call_arguments.delta``, Anthropic ``input_json_delta``).
  ``/v1/completions`` and ``/v1/embeddings`` (no recorded traffic exists) are always answered synthetically when no
  record matches: a ``text_completion`` (streamed or not), an embedding per input.

Fault injection per request with ``x-replay-fault``: ``hang`` (never answer: timeouts), ``hang-after-first``
(headers and one event, then silence), ``reset`` (headers and one event, then the TCP connection is aborted).

Observability for tests: ``requests`` (every :class:`ReceivedRequest`, path, headers and body bytes as received,
e.g. the ``x-api-key`` / ``anthropic-version`` an Anthropic call arrived with), ``disconnects`` (request numbers
whose client went away before the response was complete) with the ``disconnected`` event, ``active`` (responses
being written now) and ``completed`` (responses fully written).

Usage::

    async with ReplayUpstream(records=load_records("responses.jsonl")) as up:
        client = openai.AsyncOpenAI(base_url=up.base_url, api_key="x")
        claude = anthropic.AsyncAnthropic(base_url=up.root_url, api_key="x")

Command line (a separate process for benchmarks): ``python -m railcar.tools.replay_upstream --port 9000
--synthetic --tokens 256 [--delay-ms 5] [--records PATH ...]``; prints ``READY <base_url>`` when listening.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from railcar.codecs.registry import CODECS, route_codec
from railcar.core.wire import DONE_FRAME, sse_frame
from railcar.sidecar.errors import error_response
from railcar.sidecar.sse import split_events
from railcar.tools.synthetic import SYNTHETIC_APIS, Script, embeddings_body, split_text, stream_frames, whole_body

__all__ = ["ReplayUpstream", "ReceivedRequest", "load_records", "synthetic_frames", "split_text", "record_api",
           "MODEL_ROUTES"]

# the model-call routes served, by path (the codec names of railcar.codecs.registry)
MODEL_ROUTES = ("/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/completions", "/v1/embeddings")
# APIs answered synthetically even without synthetic mode: there is no recorded traffic for them
_ALWAYS_SYNTHETIC = frozenset({"openai_completions", "embeddings"})


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a recorded JSONL file (one JSON object per line), in file order.

    Raises ``FileNotFoundError`` when the file is missing and ``ValueError`` naming the line for bad JSON.
    """
    path = Path(path)
    out = []
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: invalid JSON: {exc}") from None
    return out


def record_api(record: dict[str, Any]) -> str:
    """The codec name a record was recorded on: its ``api`` field, ``openai_chat`` when absent (the chat file)."""
    return str(record.get("api") or "openai_chat")


def _body_key(body: Any) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def synthetic_frames(tokens: int, model: str = "synthetic-model", deltas: list[str] | None = None) -> list[bytes]:
    """SSE frames of a synthetic Chat Completions stream (:func:`railcar.core.wire.chunk_frames`): a role chunk
    carrying the first token, ``tokens - 1`` content chunks, a finish chunk (``finish_reason: stop``, with ``usage``)
    and ``data: [DONE]``; each token is ``"tok "``. With ``deltas`` (e.g. :func:`split_text` of a given text) the
    content chunks carry those strings instead and ``tokens`` is ignored (``len(deltas)`` tokens)."""
    texts = deltas if deltas is not None else ["tok "] * tokens
    return stream_frames("openai_chat", Script(tuple(texts), model))


@dataclass
class ReceivedRequest:
    """One request as the upstream saw it: ``headers`` with lower-case names, ``body`` the exact bytes, ``api`` the
    codec name of the path (``""`` for a path that is no model route)."""

    number: int
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    api: str = ""

    def json(self) -> Any:
        """``body`` parsed as JSON (``orjson.JSONDecodeError`` if it is not)."""
        return orjson.loads(self.body)


@dataclass(frozen=True)
class _Ask:
    """What a request asks of synthetic mode: delay between frames (seconds), streamed or whole, the script."""

    delay: float
    stream: bool
    script: Script
    key: tuple[Any, ...]


class ReplayUpstream:
    """The replay/synthetic upstream server; an async context manager.

    ``records``: recorded interactions of any API (dicts as in the JSONL; default none). ``synthetic``: answer
    unmatched model calls with a synthetic answer. ``tokens`` / ``delay_s``: synthetic length and inter-delta delay
    (seconds). ``split``: how recorded SSE bodies are written (``"event"``, an int byte size, or ``None``).
    ``host``/``port``: where to listen (port 0: ephemeral). ``text``: the synthetic content instead of ``tokens``
    times ``"tok "``, split into deltas of ``chunk_chars`` characters (``ValueError`` for ``chunk_chars`` < 1).
    After entering, ``base_url`` is ``http://127.0.0.1:<port>/v1`` (OpenAI clients) and ``root_url``
    ``http://127.0.0.1:<port>`` (the Anthropic client adds ``/v1/messages`` itself).

    Indexes: ``by_id`` (record id -> record), ``by_api`` (codec name -> canonical request body -> first record),
    ``by_body`` (the Chat Completions index, ``by_api["openai_chat"]``).
    """

    def __init__(self, records: Iterable[dict[str, Any]] | None = None, *, synthetic: bool = False,
                 tokens: int = 256, delay_s: float = 0.0, split: str | int | None = "event",
                 host: str = "127.0.0.1", port: int = 0, model: str = "synthetic-model",
                 text: str | None = None, chunk_chars: int = 4) -> None:
        split_text("", chunk_chars)  # validate early
        self.records = list(records or [])
        self.by_id = {r["id"]: r for r in self.records}
        self.by_api: dict[str, dict[bytes, dict[str, Any]]] = {name: {} for name in CODECS}
        for r in self.records:
            self.by_api.setdefault(record_api(r), {}).setdefault(_body_key(r["request"]), r)
        self.by_body = self.by_api["openai_chat"]
        self.synthetic, self.tokens, self.delay_s, self.split = synthetic, tokens, delay_s, split
        self.host, self.port, self.model = host, port, model
        self.requests: list[ReceivedRequest] = []
        self.disconnects: list[int] = []
        self.disconnected = asyncio.Event()
        self.active = 0
        self.completed = 0
        self.record_requests = True
        self.text, self.chunk_chars = text, chunk_chars
        self._frames: dict[Any, list[bytes]] = {}
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/v1`` (the bound port once started)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """``http://<host>:<port>``: the base URL for the ``anthropic`` client, which appends ``/v1/messages``."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> ReplayUpstream:
        """Bind and serve (``OSError`` when the port is taken); returns ``self``."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for path in MODEL_ROUTES:
            app.router.add_post(path, self._model_call)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/v1/{tail:.*}", self._echo)
        # handler_cancellation: a client that goes away cancels the handler, so disconnects are seen at once.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=4096)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        """Stop serving (idempotent); in-flight responses get 0.5 s."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ReplayUpstream:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def frames(self, tokens: int, text: str | None = None, chunk_chars: int | None = None, *,
               api: str = "openai_chat", tool: str | None = None) -> list[bytes]:
        """The cached synthetic stream frames for ``tokens`` tokens, or for ``text`` in deltas of ``chunk_chars``,
        in ``api``'s shape (a codec name with a stream; ``KeyError`` otherwise), as a call of ``tool`` when given."""
        script = self._script(tokens, text, chunk_chars or self.chunk_chars, tool)
        return self._cached(api, script, (api, tokens, text, chunk_chars or self.chunk_chars, tool))

    def _script(self, tokens: int, text: str | None, chunk_chars: int, tool: str | None) -> Script:
        if text is None and tool is None:
            return Script(("tok ",) * tokens, self.model)
        return Script.of("tok " * tokens if text is None else text, chunk_chars, self.model, tool)

    def _cached(self, api: str, script: Script, key: tuple[Any, ...]) -> list[bytes]:
        f = self._frames.get(key)
        if f is None:
            f = stream_frames(api, script)
            if len(self._frames) < 256:  # bounded: per-request texts must not grow the cache without end
                self._frames[key] = f
        return f

    # ---------------------------------------------------------------------------------------------- handlers

    async def _note(self, request: web.Request, api: str = "") -> ReceivedRequest:
        body = await request.read()
        rec = ReceivedRequest(len(self.requests) + 1, request.method, request.path, request.query_string,
                              {k.lower(): v for k, v in request.headers.items()}, body, api)
        if self.record_requests:
            self.requests.append(rec)
        return rec

    async def _model_call(self, request: web.Request) -> web.StreamResponse:
        codec = route_codec(request.path)
        api = codec.name if codec is not None else "openai_chat"
        rec = await self._note(request, api)
        fault = request.headers.get("x-replay-fault", "")
        if fault == "hang":
            await asyncio.sleep(3600)
        try:
            body = orjson.loads(rec.body)
        except orjson.JSONDecodeError:
            return _error(api, 400, "invalid JSON body", "invalid_json")
        rid = request.headers.get("x-replay-id")
        record = None
        if rid is not None:
            record = self.by_id.get(rid)
            if record is None:
                return _error(api, 404, f"no recorded interaction with id {rid!r}")
        elif "x-synthetic-tokens" not in request.headers and isinstance(body, dict):
            record = self.by_api.get(api, {}).get(_body_key(body))
        if record is not None:
            return await self._replay(request, rec, record, fault)
        hdr = request.headers
        if (self.synthetic or api in _ALWAYS_SYNTHETIC
                or any(h in hdr for h in ("x-synthetic-tokens", "x-synthetic-text", "x-synthetic-tool"))):
            return await self._synthetic(request, rec, api, body, fault)
        return _error(api, 404, "no recorded interaction matches this request body")

    async def _replay(self, request: web.Request, rec: ReceivedRequest, record: dict[str, Any],
                      fault: str) -> web.StreamResponse:
        ctype = record.get("response_headers", {}).get("content-type", "application/json")
        body = record["response_body"].encode()
        if not ctype.startswith("text/event-stream"):
            return web.Response(status=record["status"], body=body, headers={"Content-Type": ctype})
        if self.split == "event":
            pieces = [raw for raw, _ in split_events(body)]
        elif isinstance(self.split, int):
            pieces = [body[i:i + self.split] for i in range(0, len(body), self.split)]
        else:
            pieces = [body]
        return await self._stream(request, rec, record["status"], ctype, pieces, 0.0, fault)

    def _ask(self, hdr: Any, body: Any) -> _Ask:
        """The synthetic answer a request asks for (``ValueError`` for a bad ``x-synthetic-*`` header)."""
        tokens = int(hdr.get("x-synthetic-tokens", self.tokens))
        delay = float(hdr.get("x-synthetic-delay-ms", self.delay_s * 1000)) / 1000
        chunk_chars = int(hdr.get("x-synthetic-chunk-chars", self.chunk_chars))
        split_text("", chunk_chars)
        text = hdr.get("x-synthetic-text", self.text)
        tool = hdr.get("x-synthetic-tool") or None
        stream = isinstance(body, dict) and bool(body.get("stream"))
        return _Ask(delay, stream, self._script(tokens, text, chunk_chars, tool), (tokens, text, chunk_chars, tool))

    async def _synthetic(self, request: web.Request, rec: ReceivedRequest, api: str, body: Any,
                         fault: str) -> web.StreamResponse:
        if api == "embeddings":
            try:
                answer = embeddings_body(body if isinstance(body, dict) else {})
            except ValueError as exc:
                return _error(api, 400, str(exc), "invalid_request")
            return web.Response(body=orjson.dumps(answer), content_type="application/json")
        try:
            ask = self._ask(request.headers, body)
        except ValueError as exc:
            return _error(api, 400, f"bad x-synthetic-* header: {exc}", "invalid_header")
        api = api if api in SYNTHETIC_APIS else "openai_chat"
        if not ask.stream:
            return web.Response(body=orjson.dumps(whole_body(api, ask.script)), content_type="application/json")
        return await self._stream(request, rec, 200, "text/event-stream",
                                  self._cached(api, ask.script, (api, *ask.key)), ask.delay, fault)

    async def _stream(self, request: web.Request, rec: ReceivedRequest, status: int, ctype: str,
                      pieces: list[bytes], delay: float, fault: str) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers={"Content-Type": ctype, "Cache-Control": "no-cache"})
        self.active += 1
        done = False
        try:
            await resp.prepare(request)
            for i, piece in enumerate(pieces):
                await resp.write(piece)
                if fault and i == 0:
                    if fault == "reset":
                        if request.transport is not None:
                            request.transport.abort()
                        return resp
                    if fault == "hang-after-first":
                        await asyncio.sleep(3600)
                if delay:
                    await asyncio.sleep(delay)
            await resp.write_eof()
            done = True
            self.completed += 1
            return resp
        finally:
            self.active -= 1
            if not done and fault != "reset":
                self.disconnects.append(rec.number)
                self.disconnected.set()

    async def _models(self, request: web.Request) -> web.Response:
        await self._note(request)
        names = sorted({r["request"].get("model", "") for r in self.records} | {self.model})
        return web.json_response({"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "replay"} for n in names if n]})

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        """Any other ``/v1/*``: JSON echo of what arrived; ``?stream=N`` streams N SSE events instead."""
        rec = await self._note(request)
        if "stream" in request.query:
            try:
                n = int(request.query["stream"] or 3)
            except ValueError:
                return _error("openai_chat", 400, f"?stream={request.query['stream']!r}: expected a number of "
                              "events", "invalid_query")
            pieces = [sse_frame({"path": rec.path, "i": i}) for i in range(n)]
            return await self._stream(request, rec, 200, "text/event-stream", pieces + [DONE_FRAME],
                                      self.delay_s, "")
        return web.json_response({"method": rec.method, "path": rec.path, "query": rec.query,
                                  "headers": rec.headers, "body": rec.body.decode("utf-8", "replace")})


def _error(api: str, status: int, message: str, code: str = "replay_no_match") -> web.Response:
    """An error in ``api``'s own shape (OpenAI's for every API but Anthropic's, through its codec)."""
    if api == "openai_chat":
        return error_response(status, message, code=code)
    return web.Response(status=status, body=CODECS[api].error_body(status, message, code=code),
                        content_type="application/json")


def main(argv: list[str] | None = None) -> int:
    """Run the upstream as its own process until SIGTERM/SIGINT; prints ``READY <base_url>`` once listening."""
    p = argparse.ArgumentParser(prog="python -m railcar.tools.replay_upstream", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--records", action="append", default=[],
                   help="recorded JSONL (any API; repeat for several files; default: none)")
    p.add_argument("--synthetic", action="store_true", help="synthetic answers for unmatched requests")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--text", default=None, help="synthetic content instead of 'tok ' tokens")
    p.add_argument("--chunk-chars", type=int, default=4, help="characters per delta of --text")
    a = p.parse_args(argv)

    async def run() -> None:
        records = [r for path in a.records if path for r in load_records(path)]
        up = ReplayUpstream(records, synthetic=a.synthetic, tokens=a.tokens, delay_s=a.delay_ms / 1000,
                            host=a.host, port=a.port, text=a.text, chunk_chars=a.chunk_chars)
        up.record_requests = False  # long-running: keep memory flat
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with up:
            print(f"READY {up.base_url}", flush=True)
            await stop.wait()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:  # pragma: no cover
        asyncio.run(run())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
