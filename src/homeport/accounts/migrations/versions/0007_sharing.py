"""Sharing: invitations, app links, instance policy, retired tenant names, 2FA on sessions.

Revision ID: 0007_sharing
Revises: 0006_audit
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_sharing"
down_revision: str | Sequence[str] | None = "0006_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _instance_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["instance_id"],
        ["instances.id"],
        name=op.f(f"fk_{table}_instance_id_instances"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "invitations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(length=26), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("invited_by", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("expires_at", nullable=True),
        _ts("revoked_at", nullable=True),
        _ts("accepted_at", nullable=True),
        sa.Column("accepted_by", sa.Integer(), nullable=True),
        _instance_fk("invitations"),
        sa.ForeignKeyConstraint(
            ["invited_by"],
            ["users.id"],
            name=op.f("fk_invitations_invited_by_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["accepted_by"],
            ["users.id"],
            name=op.f("fk_invitations_accepted_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invitations")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_invitations_token_hash")),
    )
    op.create_index(op.f("ix_invitations_instance_id"), "invitations", ["instance_id"])
    op.create_table(
        "app_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(length=26), nullable=False),
        sa.Column("label_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("last_used_at", nullable=True),
        _instance_fk("app_links"),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_app_links_created_by_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_app_links")),
        sa.UniqueConstraint("label_hash", name=op.f("uq_app_links_label_hash")),
    )
    op.create_index(op.f("ix_app_links_instance_id"), "app_links", ["instance_id"])
    op.create_table(
        "instance_policies",
        sa.Column("instance_id", sa.String(length=26), nullable=False),
        sa.Column("require_second_factor", sa.Boolean(), nullable=False),
        _ts("updated_at"),
        _instance_fk("instance_policies"),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_instance_policies")),
    )
    op.create_table(
        "retired_instances",
        sa.Column("id", sa.String(length=26), nullable=False),
        _ts("retired_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retired_instances")),
    )
    # NOT NULL with a default: ADD COLUMN works in place on SQLite and PostgreSQL.
    op.add_column(
        "web_sessions",
        sa.Column("second_factor", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("web_sessions") as batch:
        batch.drop_column("second_factor")
    op.drop_table("retired_instances")
    op.drop_table("instance_policies")
    op.drop_index(op.f("ix_app_links_instance_id"), table_name="app_links")
    op.drop_table("app_links")
    op.drop_index(op.f("ix_invitations_instance_id"), table_name="invitations")
    op.drop_table("invitations")
