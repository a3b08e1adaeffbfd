"""The baseline for bench/ack.py: a bare Flask endpoint that parses the same form and answers as we do."""

from flask import Flask, Response, request

app = Flask(__name__)


@app.post("/webhooks/twilio/sms")
def sms() -> Response:
    """Parse the form (as any webhook must) and acknowledge with empty TwiML."""
    _ = request.form.get("MessageSid")
    return Response('<?xml version="1.0" encoding="UTF-8"?><Response />', mimetype="text/xml")


@app.post("/webhooks/twilio/call-status")
def call_status() -> Response:
    """Parse the form and answer 204, as our status-callback endpoint does."""
    _ = request.form.get("CallSid")
    return Response(status=204)
