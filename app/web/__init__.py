"""Switchboard's Flask application factory."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from app.core.settings import MAX_BODY_BYTES, Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the web app: webhooks, read API, health checks, pages, and each CRM's install routes.

    Raises ConfigError (one line naming the variable) when a setting is missing or malformed.
    """
    import connectors
    import webhooks as channel_receivers
    from app.core import bootstrap
    from app.web import dialer, fastpath, logins, webhooks
    from app.web.api import api, health
    from app.web.calls import dialer_api
    from app.web.emails import emails
    from app.web.pages import pages

    settings = bootstrap.configure(settings or Settings.from_env())
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_BODY_BYTES,
        PUBLIC_BASE_URL=settings.public_base_url,
    )
    app.extensions["switchboard"] = settings
    # Twilio's webhooks skip Flask's dispatch (issue 9), the rest goes through it; ProxyFix wraps both.
    app.wsgi_app = fastpath.FastPath(app, app.wsgi_app, fastpath.routes(channel_receivers.receivers()))  # type: ignore[method-assign]
    if settings.trust_proxy_hops:
        n = settings.trust_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n, x_prefix=n)  # type: ignore[method-assign]

    app.register_blueprint(webhooks.blueprint())
    app.register_blueprint(api)
    app.register_blueprint(emails)  # POST /api/v1/emails
    app.register_blueprint(dialer_api)
    app.register_blueprint(health)
    app.register_blueprint(pages)
    app.register_blueprint(dialer.blueprint)
    app.register_blueprint(logins.blueprint)
    for spec in connectors.providers():  # install flows, OAuth callbacks: from the CRM registry
        for target in spec.blueprints:
            app.register_blueprint(connectors.load(target))

    @app.before_request
    def _bounded_chunked_body() -> None:
        fastpath.bound_chunked_body(request.environ)  # 413 for a chunked body over the limit

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        response = jsonify({"error": exc.description or exc.name})
        response.status_code = exc.code or 500
        for name, value in exc.get_headers():
            if name.lower() != "content-type":  # keep Allow (405), Retry-After ...
                response.headers[name] = value
        return response

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError) -> Response:
        # Nothing was committed, so nothing was acknowledged: 503 tells Twilio (with a retry policy such as
        # #rp=5xx) and any other sender to try again later.
        log.error("database.unavailable error=%s", type(exc.orig).__name__)
        response = jsonify({"error": "database unavailable; retry later"})
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("request.crashed")
        return jsonify({"error": "internal error"}), 500

    return app
