"""What every emulator shares: serving its Flask app on 127.0.0.1 from a background thread, and the
`/_emulator/<action>` control endpoint that calls one of its methods."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Collection
from typing import Any, Self

import requests
from flask import Flask, Response, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


class QuietHandler(WSGIRequestHandler):
    """No access log: tests and benchmarks would drown in it."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Say nothing."""


class ServedApp:
    """start(port) -> base URL, stop(), and use as a context manager; subclasses set `app` and `name`."""

    name = "emulator"
    app: Flask

    def __init__(self) -> None:
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1:port (0 picks a free port) from a daemon thread; return the base URL."""
        if self._server is None:
            self._server = make_server(
                "127.0.0.1", port, self.app, threaded=True, request_handler=QuietHandler
            )
            self._thread = threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True)
            self._thread.start()
            self.base_url = f"http://127.0.0.1:{self._server.server_port}"
        return self.base_url

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(5)
            self._server = self._thread = None

    def serve_forever(self) -> None:
        """Block until interrupted (the `python -m emulators.X` entry points)."""
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def admit(window: deque[float], per_second: float | None) -> bool:
    """A one-second sliding window, as the providers' per-second limits count: True (and the request counted)
    if it fits, False if it is over the limit (the caller answers 429). No limit set: always True."""
    if per_second is None:
        return True
    now = time.monotonic()
    while window and window[0] <= now - 1.0:
        window.popleft()
    if len(window) >= per_second:
        return False
    window.append(now)
    return True


def add_control(app: Flask, emu: object, actions: Collection[str], read_only: Collection[str]) -> None:
    """`POST /_emulator/<action>` calls `emu.<action>(**json body)`; the `read_only` actions also answer
    `GET` with the query's arguments. Dashes in the action read as underscores. No auth, not counted: the
    control side of a contract emulator, for tests, benchmarks and demos in another process."""

    def answer(body: Any, status: int = 200) -> Response:
        return Response(json.dumps(body), status=status, mimetype="application/json")

    @app.route("/_emulator/<action>", methods=["GET", "POST"])
    def control(action: str) -> Response:
        action = action.replace("-", "_")
        if action not in actions or (request.method == "GET" and action not in read_only):
            return answer({"status": "error", "message": f"unknown action {request.method} {action}"}, 404)
        kwargs = request.args.to_dict() if request.method == "GET" else request.get_json(silent=True) or {}
        try:
            result = getattr(emu, action)(**kwargs)
        except (KeyError, ValueError, TypeError, requests.RequestException) as exc:
            return answer({"status": "error", "message": f"{type(exc).__name__}: {exc}"}, 400)
        return answer(result if isinstance(result, dict) else {"ok": True, "result": result})
