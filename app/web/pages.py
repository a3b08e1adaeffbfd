"""A minimal built-in CRM viewer: one static page that reads the API with a key the user pastes in.

It adds no authentication surface of its own: the key stays in the browser's sessionStorage and every
request goes through the tenant-scoped read API.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

pages = Blueprint("pages", __name__)


@pages.get("/")
def index() -> Response:
    """The contacts and timelines page."""
    return current_app.send_static_file("index.html")
