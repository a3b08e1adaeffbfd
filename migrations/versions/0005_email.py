"""email: the third channel (subject and thread of an email, per-tenant email provider keys)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 12:00:00.000000

Interactions get the email's subject and thread key (the root Message-ID: an outbound email and its
replies share it), the built-in CRM's timeline entries the subject, and tenants the encrypted keys of
their email providers plus the SHA-256 of the route token that identifies them in email webhook URLs.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("thread_key", sa.String(length=255), nullable=True))
        batch_op.create_index("ix_interactions_tenant_thread", ["tenant_id", "thread_key"], unique=False)
    with op.batch_alter_table("local_activities", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject", sa.Text(), nullable=True))
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_secrets", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("email_route_hash", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint("uq_tenants_email_route_hash", ["email_route_hash"])


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_constraint("uq_tenants_email_route_hash", type_="unique")
        batch_op.drop_column("email_route_hash")
        batch_op.drop_column("email_secrets")
    with op.batch_alter_table("local_activities", schema=None) as batch_op:
        batch_op.drop_column("subject")
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_index("ix_interactions_tenant_thread")
        batch_op.drop_column("thread_key")
        batch_op.drop_column("subject")
