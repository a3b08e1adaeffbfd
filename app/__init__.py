"""Switchboard: core, automation, channels, web and cli layers (see docs/architecture.md)."""
