"""Automations: the rules schema, the pure engine and step gate, compliance (opt-outs, quiet hours)."""
