"""Outbound channels: sending texts (Twilio) today; email and placing calls next."""
