"""The upstream client: one pooled ``aiohttp.ClientSession`` per process, shared by every request.

:class:`Upstream` maps a sidecar path (``/v1/chat/completions``) onto ``upstream.base_url``
(``http://host:9000/v1`` → ``http://host:9000/v1/chat/completions``): the ``/v1`` prefix the agent used is
replaced by the base URL's path, the query string kept. Anthropic Messages (``/v1/messages``) go to
``upstream.anthropic.base_url`` when set, written the way the Anthropic SDK takes it (``https://api.anthropic.com``,
``/v1`` added unless present), with its own credential; else to ``upstream.base_url`` like the rest. Errors before the response headers arrive are turned
into :class:`UpstreamError` with the HTTP status the agent gets: 502 when the upstream cannot be reached or the
connection fails (including ``upstream.connect_timeout_s``), 504 when it accepted the request but sent no
headers within ``upstream.read_timeout_s``. The same read timeout applies between body reads afterwards
(``sock_read``), so a silent stream ends instead of hanging forever.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from yarl import URL

from railcar.sidecar.settings import UpstreamConfig

__all__ = ["Upstream", "UpstreamError"]


class UpstreamError(Exception):
    """The upstream call failed before a response: ``status`` is 502 (unreachable) or 504 (timeout);
    ``code`` is ``upstream_unreachable`` or ``upstream_timeout``. The message names the upstream host, never
    request content."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Upstream:
    """Forwarding to the configured model endpoint.

    Create it in the running loop (``await Upstream.start()`` or lazily on first use); ``await close()`` at
    shutdown. ``config`` is the ``[upstream]`` section; ``api_key`` is resolved once at construction
    (``ConfigError`` if ``api_key_file`` is unreadable).
    """

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self.api_key = config.api_key()
        anth = config.anthropic
        base = anth.base_url.rstrip("/")
        self.anthropic_base = (base if base.endswith("/v1") else base + "/v1") if base else self.base_url
        # Without its own key the Anthropic route uses the main credential (one gateway serving both APIs).
        self.anthropic_key = anth.api_key() or self.api_key
        self._session: aiohttp.ClientSession | None = None

    @property
    def configured(self) -> bool:
        """An upstream is set (``upstream.base_url`` or ``upstream.anthropic.base_url``; ``/readyz`` answers 503
        until one is)."""
        return bool(self.base_url or self.anthropic_base)

    def base_for(self, api: str) -> str:
        """The base URL serving codec ``api`` (``anthropic_messages``: :attr:`anthropic_base`); ``""`` when unset."""
        return self.anthropic_base if api == "anthropic_messages" else self.base_url

    async def start(self) -> aiohttp.ClientSession:
        """Create the pooled session (idempotent)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.config.max_connections, limit_per_host=0,
                                             ttl_dns_cache=300, enable_cleanup_closed=False)
            timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=self.config.connect_timeout_s,
                                            sock_read=self.config.read_timeout_s)
            # auto_decompress: bodies are relayed decoded (Content-Encoding is dropped by headers.response_headers).
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True,
                                                  skip_auto_headers=("User-Agent",), trust_env=False)
        return self._session

    async def close(self) -> None:
        """Close the pooled session (idempotent; ``start`` or ``send`` opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url_for(self, path: str, query_string: str = "", base: str | None = None) -> str:
        """``/v1/x`` → ``<base>/x`` (``base`` default ``upstream.base_url``; ``?query`` kept). Paths not under
        ``/v1`` are appended whole."""
        tail = path[3:] if path.startswith("/v1/") or path == "/v1" else path
        url = (self.base_url if base is None else base) + tail
        return f"{url}?{query_string}" if query_string else url

    async def send(self, method: str, path: str, headers: Mapping[str, str], data: bytes | None,
                   query_string: str = "", base: str | None = None) -> aiohttp.ClientResponse:
        """Send the request to ``base`` (default ``upstream.base_url``) + ``path``; return the response once its
        headers arrived (body unread: the caller must ``release()`` or ``close()`` it). ``path`` is canonical
        (:func:`railcar.sidecar.routes.normalise`) and sent as it is, never re-normalised. Raises
        :class:`UpstreamError` (502/504)."""
        session = self._session or await self.start()
        url = URL(self.url_for(path, query_string, base), encoded=True)
        try:
            return await session.request(method, url, headers=headers, data=data, allow_redirects=False,
                                         compress=None)
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamError(502, "upstream_unreachable",
                                f"upstream {self.host()} did not accept a connection within "
                                f"{self.config.connect_timeout_s:g}s") from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError(504, "upstream_timeout",
                                f"upstream {self.host()} sent no response within "
                                f"{self.config.read_timeout_s:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(502, "upstream_unreachable",
                                f"upstream {self.host()} unreachable: {type(exc).__name__}") from None

    def host(self) -> str:
        """``host:port`` of ``upstream.base_url`` for logs and error messages (never its path or query, which
        may carry a key); ``"(invalid base_url)"`` when it does not parse."""
        try:
            u = URL(self.base_url)
            return f"{u.host}:{u.port}"
        except ValueError:
            return "(invalid base_url)"
