"""ledger tenant indexes: drop the tenant_id-only indexes of interactions and webhook_events

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 18:40:00.000000

Both tables have a unique key (and interactions three more indexes) leading with tenant_id, which serve
every tenant lookup and the ON DELETE CASCADE from tenants; the single-column indexes only cost a write per
row on the webhook's hot path (issue 9), and on a new table they were what cached plans picked for a
unique-key lookup.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_events_tenant_id")
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_index("ix_interactions_tenant_id")


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.create_index("ix_interactions_tenant_id", ["tenant_id"], unique=False)
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_events_tenant_id", ["tenant_id"], unique=False)
