"""Fetching one page safely: SSRF guard on every hop, manual redirects, timeouts, a byte cap, politeness.

How a URL is fetched:

1. Its host is resolved here (never by the HTTP client), and every address it resolves to must be public
   (not private, loopback, link-local, multicast, reserved...) unless ``allow_hosts`` admits it.
2. The request goes to one of those vetted addresses (the URL keeps its ``Host`` header and TLS name), so a
   second DNS answer cannot swap in another address (DNS rebinding).
3. Redirects are followed here, one hop at a time, and each hop goes through steps 1-2 again.
4. The body is streamed and reading stops at ``max_bytes``; only HTML and plain text are accepted.
5. Each host's request starts are spaced by ``politeness_delay`` seconds on a schedule shared by every spore
   (:mod:`.polite`, in Redis), pushed back by a server's ``Retry-After``; at most ``per_host_concurrency``
   requests to a host are in flight from one process. Waiting for a turn does not count against
   ``total_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import importlib.util
import ipaddress
import socket
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import attrs
import httpx

from .polite import Politeness, local_politeness
from .settings import ScrapeSettings
from .urls import InvalidPayload, parse_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``resolver(host, port)``: the addresses a host name resolves to (injectable for tests).
Resolver = Callable[[str, int], Awaitable[list[str]]]

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
TEXT_TYPES = frozenset({"text/plain"})
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
#: HTTP statuses worth another attempt later; every other 4xx is an answer about the URL.
TRANSIENT_STATUSES = frozenset({408, 425, 429})
#: Content encodings httpx decodes here: brotli only with the ``brotli`` package (a dependency of this plugin).
DECODABLE_ENCODINGS = frozenset(
    {"identity", "gzip", "x-gzip", "deflate"} | ({"br"} if importlib.util.find_spec("brotli") else set())
)
ENCODING_NAMES = {"br": "brotli (br)", "zstd": "Zstandard (zstd)", "compress": "LZW (compress)"}
_PERMANENT_DNS_ERRORS = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})


class ScrapeError(Exception):
    """Scraping one URL failed; ``kind`` is a stable machine name, the message a reason for people.

    ``transient`` errors (timeouts, refused connections, HTTP 429/5xx) may succeed if tried again later.
    """

    def __init__(self, kind: str, message: str, *, transient: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.transient = transient
        #: Seconds the server asked us to wait (``Retry-After``), as sent.
        self.retry_after = retry_after

    @property
    def reason(self) -> str:
        return str(self)


@attrs.frozen(kw_only=True)
class Page:
    """A fetched response body with what is known about it."""

    url: str
    final_url: str
    status_code: int
    media_type: str
    charset: str | None
    body: bytes
    redirects: tuple[str, ...] = ()

    @property
    def is_html(self) -> bool:
        return self.media_type in HTML_TYPES


# --------------------------------------------------------------------------------------------------
# The address guard
# --------------------------------------------------------------------------------------------------


def is_public(address: IPAddress) -> bool:
    """True for an address on the public internet; IPv4-mapped IPv6 addresses are judged by their IPv4 part."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def host_allowed(host: str, settings: ScrapeSettings) -> bool:
    """True when ``allow_hosts`` names this host ("intranet.example", or "*.corp.example" for its subdomains)."""
    name = host.lower().rstrip(".")
    for entry in settings.allowed_names:
        if entry.startswith("*.") and (name.endswith(entry[1:]) or name == entry[2:]):
            return True
        if name == entry:
            return True
    return False


def check_addresses(host: str, addresses: list[str], settings: ScrapeSettings) -> list[IPAddress]:
    """The addresses to connect to, all vetted; :class:`ScrapeError` ``blocked`` if any is not admitted.

    An address is admitted when it is public, lies in an ``allow_hosts`` network, or the host itself is in
    ``allow_hosts``. One refused address refuses the host: a name that mixes public and private answers is
    exactly what a rebinding attack looks like.
    """
    if not addresses:
        raise ScrapeError("dns", f"{host} resolves to no address", transient=True)
    vetted: list[IPAddress] = []
    by_name = host_allowed(host, settings)
    networks = settings.allowed_networks
    for raw in addresses:
        try:
            address = ipaddress.ip_address(raw.split("%", 1)[0])
        except ValueError:
            raise ScrapeError("blocked", f"{host} resolves to {raw!r}, which is not an IP address") from None
        if not (by_name or is_public(address) or any(address in net for net in networks)):
            named = host.strip("[]") if host.strip("[]") == str(address) else f"{host} (resolves to {address})"
            raise ScrapeError(
                "blocked",
                f"refused {named}: a non-public address (add it to [plugins.scrape] allow_hosts to admit it)",
            )
        if address not in vetted:
            vetted.append(address)
    return vetted


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (``getaddrinfo``), in its order."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ScrapeError(
            "dns", f"cannot resolve {host}: {exc.strerror or exc}", transient=exc.errno not in _PERMANENT_DNS_ERRORS
        ) from None
    return [str(info[4][0]) for info in infos]


# --------------------------------------------------------------------------------------------------
# Per-host politeness, per process (one registry per event loop: a spore has one)
# --------------------------------------------------------------------------------------------------


class HostGate:
    """At most ``concurrency`` requests at once to one host, their starts at least ``delay`` seconds apart."""

    def __init__(self, concurrency: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._spacing = asyncio.Lock()
        self._next_start = 0.0

    @contextlib.asynccontextmanager
    async def slot(self, delay: float) -> AsyncIterator[None]:
        async with self._slots:
            async with self._spacing:
                wait = self._next_start - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._next_start = time.monotonic() + delay
            yield


_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, HostGate]] = weakref.WeakKeyDictionary()


def host_gate(host: str, settings: ScrapeSettings) -> HostGate:
    """This process's gate for ``host`` (created with the settings in force at first use)."""
    gates = _GATES.setdefault(asyncio.get_running_loop(), {})
    gate = gates.get(host)
    if gate is None:
        gate = gates[host] = HostGate(settings.per_host_concurrency)
    return gate


# --------------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------------


async def fetch(
    url: str,
    settings: ScrapeSettings,
    *,
    resolver: Resolver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    politeness: Politeness | None = None,
) -> Page:
    """GET ``url`` following redirects by hand, every hop vetted; :class:`ScrapeError` when that fails.

    :param politeness: the per-host schedule; the hive's (:class:`~.polite.RedisPoliteness`) on a spore,
        this process's own by default.
    """
    resolve = resolver or system_resolver
    polite = politeness or local_politeness()
    timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout)
    budget = settings.total_timeout
    seen: list[str] = []
    current = _canonical(url)
    # trust_env=False: a proxy from the environment would resolve names itself, around the guard.
    client = httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)
    async with client:
        while True:
            seen.append(current)
            target = httpx.URL(current)
            host = target.raw_host.decode("ascii")
            port = target.port or (443 if target.scheme == "https" else 80)
            try:
                async with asyncio.timeout(settings.connect_timeout):
                    resolved = await resolve(host, port)
                addresses = check_addresses(host, resolved, settings)
            except TimeoutError:
                raise ScrapeError("dns", f"resolving {host} timed out", transient=True) from None
            except ScrapeError as exc:
                if len(seen) == 1:
                    raise
                raise ScrapeError(exc.kind, f"redirect to {current}: {exc}", transient=exc.transient) from None
            site = target.netloc.decode("ascii")  # host[:port]: the schedule's key
            wait = await polite.take_turn(site, settings.politeness_delay)
            if wait > 0:
                await asyncio.sleep(wait)
            async with host_gate(host, settings).slot(0):
                started = time.monotonic()
                try:
                    answer = await _exchange(client, target, addresses, settings, budget)
                except ScrapeError as exc:
                    if exc.retry_after is None:
                        raise
                    pause = min(exc.retry_after, settings.max_retry_after)
                    await polite.hold_off(site, pause)
                    raise ScrapeError(
                        exc.kind, f"{exc} (Retry-After {exc.retry_after:g}s: {host} is left alone for {pause:g}s)",
                        transient=exc.transient, retry_after=exc.retry_after,
                    ) from None
                budget -= time.monotonic() - started
            if isinstance(answer, Page):
                return attrs.evolve(answer, url=seen[0], redirects=tuple(seen[1:]))
            try:
                following = _canonical(str(target.join(answer)))
            except (ScrapeError, httpx.InvalidURL) as exc:
                raise ScrapeError("invalid_url", f"redirect to {answer[:200]!r} refused: {exc}") from None
            if following in seen:
                raise ScrapeError("redirect_loop", f"redirect loop: {current} redirects back to {following}")
            if len(seen) > settings.max_redirects:
                raise ScrapeError(
                    "too_many_redirects", f"more than {settings.max_redirects} redirects (last: {following})"
                )
            current = following


def _canonical(url: str) -> str:
    try:
        return parse_url(url)
    except InvalidPayload as exc:
        raise ScrapeError("invalid_url", str(exc)) from None


async def _exchange(
    client: httpx.AsyncClient, target: httpx.URL, addresses: list[IPAddress], settings: ScrapeSettings, budget: float
) -> Page | str:
    """One request to a vetted address: the page, or the ``Location`` of a redirect."""
    if budget <= 0:
        raise _timeout(f"no complete answer within {settings.total_timeout:g}s")
    host_header = target.netloc.decode("ascii")
    sni = target.raw_host.decode("ascii")
    headers = {
        "Host": host_header,
        "User-Agent": settings.user_agent,
        "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.1",
        "Accept-Encoding": ", ".join(e for e in ("gzip", "deflate", "br") if e in DECODABLE_ENCODINGS),
    }
    last_error: Exception | None = None
    try:
        async with asyncio.timeout(budget):
            for address in addresses:
                pinned = target.copy_with(host=str(address))
                try:
                    request = client.build_request("GET", pinned, headers=headers, extensions={"sni_hostname": sni})
                    response = await client.send(request, stream=True)
                    try:
                        return await _read(response, str(target), settings)
                    finally:
                        await response.aclose()
                except httpx.ConnectError as exc:  # try the host's next address
                    last_error = exc
    except TimeoutError:
        raise _timeout(f"no complete answer within {settings.total_timeout:g}s") from None
    except httpx.ConnectTimeout:
        raise _timeout(f"connecting timed out after {settings.connect_timeout:g}s") from None
    except httpx.ReadTimeout:
        raise _timeout(f"the server sent nothing for {settings.read_timeout:g}s") from None
    except httpx.TimeoutException as exc:
        raise _timeout(f"timed out: {type(exc).__name__}") from None
    except httpx.HTTPError as exc:
        raise ScrapeError("network", network_reason(exc), transient=True) from None
    raise ScrapeError("connect", f"cannot connect to {target.host}: {last_error}", transient=True)


async def _read(response: httpx.Response, url: str, settings: ScrapeSettings) -> Page | str:
    status = response.status_code
    if status in REDIRECT_CODES:
        location = str(response.headers.get("location", "")).strip()
        if not location:
            raise ScrapeError("http_status", f"HTTP {status} redirect without a Location header")
        return location
    if status >= 400:
        transient = status >= 500 or status in TRANSIENT_STATUSES
        retry_after = parse_retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
        raise ScrapeError("http_status", f"HTTP {status} {response.reason_phrase}".rstrip(), transient=transient,
                          retry_after=retry_after)
    if not 200 <= status < 300 or status in (204, 205):
        raise ScrapeError("http_status", f"HTTP {status} {response.reason_phrase}: no page to read".rstrip())
    media_type, charset = _content_type(response.headers.get("content-type", ""))
    if media_type and media_type not in HTML_TYPES | TEXT_TYPES:
        raise ScrapeError("not_html", f"content type {media_type} is not HTML or plain text")
    encodings = [e.strip() for e in response.headers.get("content-encoding", "").lower().split(",") if e.strip()]
    unknown = [e for e in encodings if e not in DECODABLE_ENCODINGS]
    if unknown:
        names = ", ".join(ENCODING_NAMES.get(e, e) for e in unknown)
        raise ScrapeError("unsupported_encoding", f"the body is compressed with {names}, which cannot be decoded here")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_bytes:
        raise ScrapeError("too_large", f"the body is {int(declared)} bytes, over the {settings.max_bytes}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > settings.max_bytes:
            raise ScrapeError("too_large", f"the body is over the {settings.max_bytes}-byte limit; stopped reading")
        chunks.append(chunk)
    body = b"".join(chunks)
    if b"\x00" in body[:4096]:
        raise ScrapeError("binary", f"the body is binary data, not {media_type or 'text'}")
    if not media_type:
        media_type = "text/html" if b"<html" in body[:4096].lower() else "text/plain"
    return Page(url=url, final_url=url, status_code=status, media_type=media_type, charset=charset, body=body)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); ``None`` if absent or bad."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


#: What an httpx network error with no message of its own means.
_NETWORK_ERRORS = {
    "ReadError": "the connection was reset or closed while reading the answer",
    "WriteError": "the connection was reset or closed while sending the request",
    "RemoteProtocolError": "the server closed the connection without a complete answer",
    "ConnectError": "the connection could not be made",
}


def network_reason(exc: BaseException) -> str:
    """A reason for a network error that is never empty: the first message in its chain, else what it means."""
    name = type(exc).__name__
    cause: BaseException | None = exc
    while cause is not None:
        message = str(cause).strip()
        if message:
            return f"{name}: {message}"
        cause = cause.__cause__ or cause.__context__
    return f"{name}: {_NETWORK_ERRORS.get(name, 'the connection failed')}"


def _timeout(reason: str) -> ScrapeError:
    return ScrapeError("timeout", reason, transient=True)


def _content_type(header: str) -> tuple[str, str | None]:
    media_type, _, params = header.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip("\"'")
    return media_type.strip().lower(), charset


def describe(exc: BaseException) -> dict[str, Any]:
    """An error record's fields for a :class:`ScrapeError`."""
    if isinstance(exc, ScrapeError):
        return {"error": exc.reason, "error_kind": exc.kind}
    return {"error": f"{type(exc).__name__}: {exc}", "error_kind": "internal"}
