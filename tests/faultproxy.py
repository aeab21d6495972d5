"""A fault-injecting HTTP proxy on loopback, put in front of the moto S3 server in tests.

Jobs reach S3 through ``storage_options.endpoint_url``, so pointing that at this proxy
injects faults into every process of the job (driver and Ray actors) with no test hook
in the code under test. Faults happen on the wire: an S3 error response (503 SlowDown,
500 InternalError), a connection reset before the request reaches the server, or a
reset *after* the server applied it (the response is lost, as on a flaky network).
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("503", "500", "reset", "lost")
_ERROR_BODY = {
    "403": ("AccessDenied", "Access Denied"),
    "503": ("SlowDown", "Please reduce your request rate."),
    "500": ("InternalError", "We encountered an internal error. Please try again."),
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection"}


class FaultProxy:
    """Relays HTTP to ``upstream``, failing a fraction ``rate`` of requests (seeded)."""

    def __init__(self, upstream: str, rate: float = 0.0, seed: int = 0):
        self.upstream = urlsplit(upstream)
        self.rate = rate
        self.outage: str | None = None  # a fault for every request: "503", "403", "reset"
        self.script: list[str | None] = []  # faults for the next requests, in order
        self.trip_on: str | None = None  # a path suffix: once a PUT of it succeeds, outage on
        self.first_put_fails: str | None = None  # a path suffix: the first PUT of each gets 503
        self.hold: dict[str, threading.Event] = {}  # path suffix -> PUTs wait until it is set
        self.latency_s = 0.0  # added to every request: an object store's first-byte time
        self._failed_once: set[str] = set()
        self.faults: Counter[str] = Counter()
        self.requests = 0
        self._random, self._lock = random.Random(seed), threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def choose_fault(self, method: str, path: str) -> str | None:
        path = path.split("?")[0]
        with self._lock:
            self.requests += 1
            if self.first_put_fails and method == "PUT" and path.endswith(
                    self.first_put_fails) and path not in self._failed_once:
                self._failed_once.add(path)
                fault = "503"
            elif self.outage:
                fault = self.outage
            elif self.script:
                fault = self.script.pop(0)
            elif self._random.random() < self.rate:
                fault = self._random.choice(FAULTS)
            else:
                fault = None
            if fault:
                self.faults[fault] += 1
            return fault

    def forward(self, method: str, path: str, headers, body: bytes):
        time.sleep(self.latency_s)
        for suffix, release in self.hold.items():
            if method == "PUT" and path.split("?")[0].endswith(suffix):
                release.wait(60)  # a slow store: the PUT takes as long as the test says
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if self.trip_on and method == "PUT" and path.split("?")[0].endswith(self.trip_on) \
                and resp.status == 200:
            self.outage = "503"
        return resp, data

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler_class(proxy: FaultProxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass  # trailers end with an empty line
            return body

        def _reset(self) -> None:
            # SO_LINGER 0: close with a TCP RST, what a crashed load balancer sends
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.close_connection = True

        def _error(self, fault: str) -> None:
            code, message = _ERROR_BODY[fault]
            body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                    f"<Message>{message}</Message></Error>").encode()
            self.send_response_only(int(fault))
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _relay(self) -> None:
            body = self._body()
            fault = proxy.choose_fault(self.command, self.path)
            if fault == "reset":
                return self._reset()
            if fault in _ERROR_BODY:
                return self._error(fault)
            resp, data = proxy.forward(self.command, self.path, self.headers, body)
            if fault == "lost":
                return self._reset()
            self.send_response_only(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            length = resp.getheader("Content-Length") if self.command == "HEAD" else len(data)
            self.send_header("Content-Length", str(length or 0))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

    return Handler

