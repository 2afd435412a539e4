"""A loopback HTTP server for download tests (no internet here: 127.0.0.1 only, stops with the test)."""
from __future__ import annotations

import http.server
import socket
import struct
import threading
import time


class LoopbackServer:
    """Loopback HTTP server: routes path -> (mode, body); counts requests per path.

    Modes: ``"ok"``; ``"truncate"`` (promise len(body) bytes, send a third, close); ``"reset"`` (send a third,
    then reset the connection: RST); ``"stall"`` (send a third, then wait `stall_s` seconds before closing);
    ``"fail:N"`` (HTTP 500 to the first N requests, then ``"ok"``); ``"html"`` (200 with an HTML error page
    instead of the body); ``"404"`` (also any unknown path).
    """

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.hits: dict[str, int] = {}
        self.stall_s = 3.0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                hit = server.hits[self.path] = server.hits.get(self.path, 0) + 1
                mode, body = server.routes.get(self.path, ("404", b""))
                if mode == "404":
                    self.send_error(404)
                    return
                if mode.startswith("fail:") and hit <= int(mode.split(":")[1]):
                    self.send_error(500, "Internal Server Error")
                    return
                if mode == "html":
                    body = b"<!DOCTYPE html><html><body><h1>Download quota exceeded</h1></body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8" if mode == "html"
                                 else "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode in ("ok", "html") or mode.startswith("fail:"):
                    self.wfile.write(body)
                else:
                    self.wfile.write(body[: len(body) // 3])
                    self.wfile.flush()
                if mode == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif mode == "stall":
                    time.sleep(server.stall_s)
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
