"""Changing an account's email address: the pending change and the old address's undo link.

Revision ID: 0010_email_change
Revises: 0009_oidc_flow_ticket
Create Date: 2027-01-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_email_change"
down_revision: str | Sequence[str] | None = "0009_oidc_flow_ticket"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _user_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["user_id"], ["users.id"], name=op.f(f"fk_{table}_user_id_users"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "email_changes",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("new_email", sa.String(length=320), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        _ts("used_at", nullable=True),
        _user_fk("email_changes"),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_email_changes")),
    )
    op.create_index(op.f("ix_email_changes_user_id"), "email_changes", ["user_id"])
    op.create_table(
        "email_change_undos",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("old_email", sa.String(length=320), nullable=False),
        sa.Column("new_email", sa.String(length=320), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        _ts("used_at", nullable=True),
        _user_fk("email_change_undos"),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_email_change_undos")),
    )
    op.create_index(op.f("ix_email_change_undos_user_id"), "email_change_undos", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_email_change_undos_user_id"), table_name="email_change_undos")
    op.drop_table("email_change_undos")
    op.drop_index(op.f("ix_email_changes_user_id"), table_name="email_changes")
    op.drop_table("email_changes")
