"""The baseline for bench/ack.py: a bare Flask endpoint that parses the same form and answers empty TwiML."""

from flask import Flask, Response, request

app = Flask(__name__)


@app.post("/webhooks/twilio/sms")
def sms() -> Response:
    """Parse the form (as any webhook must) and acknowledge."""
    _ = request.form.get("MessageSid")
    return Response('<?xml version="1.0" encoding="UTF-8"?><Response />', mimetype="text/xml")
