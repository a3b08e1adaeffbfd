"""A lean WSGI path for the channel webhooks whose URL names only the stream (Twilio's), in front of Flask.

Issue 9: the ack is CPU-bound, and for a webhook Flask's request dispatch (request context, session, URL
map, before_request hooks, full_dispatch_request, finalize_request, teardown) is a share of it that buys
nothing: the route is known from the path alone and the view is one function. `FastPath` answers
`POST /webhooks/<provider>/<stream>` for those receivers itself, with a request of the app's own class in an
app context, running the same `app.web.webhooks.receive` (verify -> parse -> plan -> record -> enqueue ->
reply) the Flask view runs, and hands every other request to Flask unchanged.

What stays identical, and how:
- the body bounds: the app's Request class reads MAX_CONTENT_LENGTH / MAX_FORM_MEMORY_SIZE from the app
  config (413), and `bound_chunked_body`, the same function as the app's before_request hook, bounds a
  chunked body;
- ProxyFix: the factory wraps this dispatcher (ProxyFix(FastPath(...))), so it sees the fixed environ;
- errors (403/400/413/503/500 bodies and headers): an exception is answered by Flask itself, in a request
  context pushed for the error only, through the same error handlers (blueprint, then app) a Flask view's
  exception goes to (`handle_user_exception`, else `handle_exception`);
- the log lines (`webhook.accepted`, `webhook.rejected`) come from the same functions.
Anything that is not a POST to exactly such a path (another method: Flask's 405; a trailing slash: 404;
email routes with a token in the path) goes to Flask.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import RequestEntityTooLarge

from app.core.settings import MAX_BODY_BYTES

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask

    from webhooks.base import Receiver


def bound_chunked_body(env: dict[str, Any]) -> None:
    """Read a chunked body whole, or refuse it (RequestEntityTooLarge) when it is over MAX_BODY_BYTES.

    A chunked body has no Content-Length to refuse up front, and werkzeug silently cuts it at
    MAX_CONTENT_LENGTH (a cut webhook then fails its signature: 403). Read at most one byte more than the
    limit: more is 413 like an oversized Content-Length; else the view gets the whole body.
    """
    if "chunked" not in env.get("HTTP_TRANSFER_ENCODING", "").lower():
        return
    if not env.get("wsgi.input_terminated"):
        return  # werkzeug reads no body from a server that does not end the stream for us
    raw, body = env["wsgi.input"], bytearray()
    while len(body) <= MAX_BODY_BYTES:
        chunk = raw.read(MAX_BODY_BYTES + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()
    env["wsgi.input"] = io.BytesIO(bytes(body))
    env["CONTENT_LENGTH"] = str(len(body))
    del env["HTTP_TRANSFER_ENCODING"]  # werkzeug ignores Content-Length next to chunked


def routes(receivers: dict[str, Receiver]) -> dict[str, tuple[Receiver, str]]:
    """PATH_INFO -> (receiver, stream) for every stream of a receiver without a token in its path."""
    return {
        f"/webhooks/{name}/{stream}": (receiver, stream)
        for name, receiver in receivers.items()
        if not receiver.token_in_path
        for stream in receiver.streams
    }


class FastPath:
    """WSGI middleware: the webhook routes of `routes` answered directly, everything else by `fallback`."""

    def __init__(
        self, app: Flask, fallback: WSGIApplication, routes: dict[str, tuple[Receiver, str]]
    ) -> None:
        self.app, self.fallback, self.routes = app, fallback, routes

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        route = self.routes.get(environ.get("PATH_INFO", ""))
        if route is None or environ.get("REQUEST_METHOD") != "POST":
            return self.fallback(environ, start_response)
        from app.web.webhooks import receive

        receiver, stream = route
        app = self.app
        with app.app_context():
            request = app.request_class(environ)
            request.json_module = app.json
            try:
                bound_chunked_body(environ)
                response = receive(receiver, stream, request)
            except Exception as exc:  # answered by Flask's own handlers, as a view's exception would be
                with app.request_context(environ):
                    try:
                        response = app.finalize_request(app.handle_user_exception(exc))
                    except Exception as unhandled:
                        response = app.handle_exception(unhandled)
            return response(environ, start_response)
