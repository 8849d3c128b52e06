"""The local web server the tests scrape, its pages, and the settings that admit it.

Every address the tests fetch is on this machine: the server listens on 127.0.0.1, and the "private address"
cases use other loopback addresses (127.0.0.2) or a resolver/transport that never touches the network.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import brotli

PAGES = Path(__file__).parent / "pages"
EN_PAGE = PAGES / "en_bees.html"
PL_PAGE = PAGES / "pl_ogrody.html"
SLOW_SECONDS = 3.0

#: Settings that admit the local server and keep every failure fast.
TEST_SETTINGS: dict[str, Any] = {
    "allow_hosts": ["127.0.0.1"],
    "politeness_delay": 0,
    "per_host_concurrency": 8,
    "connect_timeout": 2,
    "read_timeout": 0.5,
    "total_timeout": 4,
    "max_bytes": 300_000,
    "max_redirects": 4,
}


def article_body(page: Path) -> str:
    """The text of the article paragraphs of a test page (what a summary may quote), whitespace-normalised."""
    from lxml import html

    tree = html.fromstring(page.read_bytes())
    paragraphs = tree.xpath("//div[@class='story-body' or @class='tresc']/p")
    assert paragraphs, f"{page.name} has no article body"
    return " ".join(" ".join(p.text_content().split()) for p in paragraphs)


def boilerplate(page: Path) -> str:
    """Every text of a test page outside the article paragraphs (navigation, ads, comments, footer), normalised."""
    from lxml import html

    tree = html.fromstring(page.read_bytes())
    for element in tree.xpath("//div[@class='story-body' or @class='tresc']/p | //script | //style"):
        element.drop_tree()
    return " ".join(tree.text_content().split())


class ArticleServer:
    """A threaded HTTP server on 127.0.0.1: two article pages and one endpoint per way a fetch can go wrong.

    It counts every request it answers (``count``), by path, so tests can prove a request was *not* made.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []  # (Host header, path with query)
        self.user_agents: set[str] = set()
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append((self.headers.get("Host", ""), self.path))
                    server.user_agents.add(self.headers.get("User-Agent", ""))
                    server.arrivals.append(time.monotonic())
                # The client hanging up early is what it should do for /huge and /slow.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       name=f"article-server-{self.port}", daemon=True)

    def url(self, path: str) -> str:
        return self.base + path

    def count(self, path: str = "") -> int:
        """Requests answered whose path starts with ``path`` (all of them for ``""``)."""
        with self._lock:
            return sum(1 for _, p in self.requests if p.startswith(path))

    def hosts(self) -> Counter[str]:
        """Requests answered, by the ``Host`` header they carried."""
        with self._lock:
            return Counter(h for h, _ in self.requests)

    # --- routes --------------------------------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path, query = parts.path, parse_qs(parts.query)
        if path.startswith("/en/"):
            self.send(h, 200, EN_PAGE.read_bytes(), "text/html; charset=utf-8")
        elif path.startswith("/pl/"):
            self.send(h, 200, PL_PAGE.read_bytes(), "text/html")  # no charset: the page's <meta> says utf-8
        elif path == "/notes.txt":
            text = ("Field notes\n\nThe hives were opened on Saturday morning. Every frame was checked for brood "
                    "and stores. Two colonies need more room before the summer flow. The weather stayed dry and "
                    "warm all week.\n")
            self.send(h, 200, text.encode(), "text/plain; charset=utf-8")
        elif path == "/missing":
            self.send(h, 404, b"<html><body><h1>Not Found</h1></body></html>", "text/html")
        elif path == "/unavailable":
            self.send(h, 503, b"try later", "text/plain")
        elif path == "/slow":
            self.stopping.wait(SLOW_SECONDS)
            self.send(h, 200, EN_PAGE.read_bytes(), "text/html")
        elif path == "/drip":
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.end_headers()
            for _ in range(100):  # a byte every 0.2 s: never idle long enough for the read timeout
                if self.stopping.wait(0.2):
                    break
                h.wfile.write(b" ")
                h.wfile.flush()
        elif path == "/huge":
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.end_headers()  # no Content-Length: the client must count and stop by itself
            h.wfile.write(b"<html><body><p>")
            chunk = b"All work and no play makes a very long page. " * 1500
            for _ in range(200):  # ~13 MB unless the client hangs up first
                if self.stopping.is_set():
                    break
                h.wfile.write(chunk)
        elif path == "/huge-declared":
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Length", "50000000")
            h.end_headers()
        elif path == "/busy":  # 429 with Retry-After: ?after=SECONDS
            h.send_response(429)
            h.send_header("Retry-After", query.get("after", ["1"])[0])
            h.send_header("Content-Length", "0")
            h.end_headers()
        elif path == "/reset":  # read the request, then reset the connection (RST, no answer)
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
        elif path == "/brotli":  # compressed with brotli whatever the request accepted
            body = brotli.compress(EN_PAGE.read_bytes())
            h.send_response(200)
            h.send_header("Content-Type", "text/html; charset=utf-8")
            h.send_header("Content-Encoding", "br")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        elif path == "/zstd":
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Encoding", "zstd")
            h.send_header("Content-Length", "4")
            h.end_headers()
            h.wfile.write(b"\x28\xb5\x2f\xfd")
        elif path == "/binary":
            self.send(h, 200, bytes(range(256)) * 64, "application/octet-stream")
        elif path == "/fake-html":
            self.send(h, 200, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(2000), "text/html")
        elif path == "/loop/a":
            self.redirect(h, 302, "/loop/b")
        elif path == "/loop/b":
            self.redirect(h, 302, "/loop/a")
        elif path == "/moved":
            self.redirect(h, 301, "/en/moved-here")
        elif path == "/redirect":
            self.redirect(h, 302, query["to"][0])
        else:
            self.send(h, 404, b"no such test page", "text/plain")

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    @staticmethod
    def redirect(h: BaseHTTPRequestHandler, status: int, location: str) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def __enter__(self) -> ArticleServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
