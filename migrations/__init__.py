"""Alembic migrations; run with `switchboard db upgrade` (the Procfile's release step)."""
