"""automations marker: which version of an interaction the automations have seen

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 15:00:00.000000

`interactions.automations_version` is the newest version the automations finished with; it is set in the
transaction that plans the steps. A row whose version is higher is automation work Redis may have lost
(a FLUSHALL, a restart without persistence), and the sweep re-queues it. The partial index holds only
those rows, by age, so the sweep's query stays cheap however large the table grows. Existing rows count as
seen: the automations ran for them (or their tenant had no rules), and a sweep must never fire old
triggers.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNSEEN = sa.text("automations_version < version")


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("automations_version", sa.Integer(), server_default="0", nullable=False)
        )
    op.execute("UPDATE interactions SET automations_version = version")
    op.create_index(
        "ix_interactions_automations_unseen",
        "interactions",
        ["updated_at"],
        unique=False,
        postgresql_where=UNSEEN,
        sqlite_where=UNSEEN,
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index("ix_interactions_automations_unseen", table_name="interactions")
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_column("automations_version")
