"""A loopback webhook receiver for Alertmanager tests: records every notification it gets.

    webhook = Webhook()
    webhook.thread.start()          # serves on 127.0.0.1:webhook.port
    webhook.notifications("/probenet/ha")   # the JSON bodies posted to that path, in order
    webhook.close()
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Webhook"]


class Webhook:
    """A loopback webhook receiver that records every notification by path."""

    def __init__(self) -> None:
        """Bind 127.0.0.1 on a free port; serving starts with `thread.start()`."""
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook",
                                       daemon=True)

    def notifications(self, path: str) -> list[dict[str, Any]]:
        """The bodies of every notification posted to `path`, oldest first."""
        with self.lock:
            return [body for p, body in self.received if p == path]

    def alertnames(self, path: str) -> set[tuple[str, str]]:
        """(alertname, status) of every alert notified on `path`."""
        return {(a["labels"]["alertname"], a["status"])
                for body in self.notifications(path) for a in body["alerts"]}

    def close(self) -> None:
        """Stop serving and release the port."""
        if self.thread.is_alive():  # shutdown() waits for serve_forever, forever if unstarted
            self.server.shutdown()
        self.server.server_close()
