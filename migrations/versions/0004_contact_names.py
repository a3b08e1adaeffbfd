"""contact names: first_name and last_name of built-in CRM contacts

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00.000000

Built-in contacts had only a display name, and templates took its first word as the first name, so an
unknown caller (named after the number, "+1 415-555-0299") was greeted "Hi +1". First and last name are
now columns, empty unless known. The backfill splits existing names that look like a person's (no digit,
no @, not "Unknown"): the first word is the first name, the rest the last name. It is a frozen copy of
the rule, on purpose: connectors.local.split_name may get smarter without changing what this did.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000


def _split(name: str | None) -> tuple[str | None, str | None]:
    text = " ".join((name or "").split())
    if not text or "@" in text or any(c.isdigit() for c in text) or text.lower() == "unknown":
        return None, None
    first, _, last = text.partition(" ")
    return first[:200], last[:200] or None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("local_contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("first_name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("last_name", sa.String(length=200), nullable=True))

    contacts = sa.table(
        "local_contacts",
        sa.column("id", sa.Integer()),
        sa.column("name", sa.String()),
        sa.column("first_name", sa.String()),
        sa.column("last_name", sa.String()),
    )
    conn = op.get_bind()
    after = 0
    while True:
        rows = conn.execute(
            sa.select(contacts.c.id, contacts.c.name)
            .where(contacts.c.id > after)
            .order_by(contacts.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        after = rows[-1].id
        for row in rows:
            first, last = _split(row.name)
            if first is not None:
                conn.execute(
                    contacts.update().where(contacts.c.id == row.id).values(first_name=first, last_name=last)
                )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("local_contacts", schema=None) as batch_op:
        batch_op.drop_column("last_name")
        batch_op.drop_column("first_name")
