"""automations

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 18:52:55.849814
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""

    op.create_table(
        "action_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("rule", sa.String(length=100), nullable=False),
        sa.Column("rules_version", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=64), nullable=False),
        sa.Column("trigger_ref", sa.String(length=100), nullable=False),
        sa.Column("trigger_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("party_phone", sa.String(length=20), nullable=True),
        sa.Column("party_email", sa.String(length=320), nullable=True),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "key"),
    )
    with op.batch_alter_table("action_runs", schema=None) as batch_op:
        batch_op.create_index("ix_action_runs_due", ["state", "due_at"], unique=False)
        batch_op.create_index("ix_action_runs_party", ["tenant_id", "party_phone", "state"], unique=False)
        batch_op.create_index(batch_op.f("ix_action_runs_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "opt_outs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("phone", sa.String(length=20), nullable=False),
        sa.Column("opted_out", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "phone"),
    )
    with op.batch_alter_table("opt_outs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_opt_outs_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "rule_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "version"),
    )
    with op.batch_alter_table("rule_sets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rule_sets_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "team_cursors",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("team", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "team"),
    )
    op.create_table(
        "user_teams",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("team", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "team"),
    )
    with op.batch_alter_table("local_contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("time_zone", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("properties", sa.JSON(), server_default="{}", nullable=False))


def downgrade() -> None:
    """Revert this revision."""

    with op.batch_alter_table("local_contacts", schema=None) as batch_op:
        batch_op.drop_column("properties")
        batch_op.drop_column("time_zone")

    op.drop_table("user_teams")
    op.drop_table("team_cursors")
    with op.batch_alter_table("rule_sets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rule_sets_tenant_id"))

    op.drop_table("rule_sets")
    with op.batch_alter_table("opt_outs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_opt_outs_tenant_id"))

    op.drop_table("opt_outs")
    with op.batch_alter_table("action_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_action_runs_tenant_id"))
        batch_op.drop_index("ix_action_runs_party")
        batch_op.drop_index("ix_action_runs_due")

    op.drop_table("action_runs")
