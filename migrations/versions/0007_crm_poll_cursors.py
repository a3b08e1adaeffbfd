"""crm poll cursors: polling a CRM for changes (Salesforce orgs without Outbound Messages)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 14:30:00.000000

Per tenant and polled object, the (modstamp, id) of the last record whose triggers are stored; per watched
field of a record, the value last seen, so a poll tells a change from a touch.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "crm_poll_cursors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("modstamp", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_id", sa.String(length=64), nullable=True),
        sa.Column("baseline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "stream"),
    )
    with op.batch_alter_table("crm_poll_cursors", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_crm_poll_cursors_tenant_id"), ["tenant_id"], unique=False)
    op.create_table(
        "crm_poll_values",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("object_id", sa.String(length=64), nullable=False),
        sa.Column("field", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "object_id", "field"),
    )
    with op.batch_alter_table("crm_poll_values", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_crm_poll_values_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("crm_poll_values", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_crm_poll_values_tenant_id"))
    op.drop_table("crm_poll_values")
    with op.batch_alter_table("crm_poll_cursors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_crm_poll_cursors_tenant_id"))
    op.drop_table("crm_poll_cursors")
