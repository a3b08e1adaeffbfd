"""Channel webhook receivers: one module per provider (verify -> parse -> plan -> reply)."""
