"""crm accounts, crm events, per-row retry schedule

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 17:52:11.094897
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "crm_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("object_type", sa.String(length=32), nullable=True),
        sa.Column("object_id", sa.String(length=64), nullable=True),
        sa.Column("property_name", sa.String(length=100), nullable=True),
        sa.Column("property_value", sa.Text(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "provider", "event_id"),
    )
    with op.batch_alter_table("crm_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_crm_events_tenant_id"), ["tenant_id"], unique=False)

    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_interactions_tenant_pending", ["tenant_id", "sync_state", "id"], unique=False
        )

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("crm_account_id", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("crm_status", sa.String(length=32), server_default="ok", nullable=False)
        )
        batch_op.add_column(sa.Column("crm_status_reason", sa.Text(), nullable=True))
        batch_op.create_unique_constraint("uq_tenants_crm_account", ["crm", "crm_account_id"])


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_constraint("uq_tenants_crm_account", type_="unique")
        batch_op.drop_column("crm_status_reason")
        batch_op.drop_column("crm_status")
        batch_op.drop_column("crm_account_id")

    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_index("ix_interactions_tenant_pending")
        batch_op.drop_column("next_attempt_at")

    with op.batch_alter_table("crm_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_crm_events_tenant_id"))

    op.drop_table("crm_events")
