"""Email: sign-in codes for new networks, known devices and networks, resets, sign-ups.

Revision ID: 0004_email
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_email"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _user_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["user_id"], ["users.id"], name=op.f(f"fk_{table}_user_id_users"), ondelete="CASCADE"
    )


def _user_index(table: str) -> None:
    op.create_index(op.f(f"ix_{table}_user_id"), table, ["user_id"])


def upgrade() -> None:
    op.create_table(
        "email_signins",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("next_path", sa.String(length=2048), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("sends", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("last_sent_at"),
        _ts("code_expires_at"),
        _ts("expires_at"),
        _ts("used_at", nullable=True),
        _user_fk("email_signins"),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_email_signins")),
    )
    _user_index("email_signins")
    op.create_table(
        "signin_alerts",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        _ts("used_at", nullable=True),
        _user_fk("signin_alerts"),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_signin_alerts")),
    )
    _user_index("signin_alerts")
    op.create_table(
        "known_devices",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("last_seen_at"),
        _user_fk("known_devices"),
        sa.PrimaryKeyConstraint("token_hash", "user_id", name=op.f("pk_known_devices")),
    )
    _user_index("known_devices")
    op.create_table(
        "known_networks",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("network", sa.String(length=64), nullable=False),
        _ts("created_at"),
        _ts("last_seen_at"),
        _user_fk("known_networks"),
        sa.PrimaryKeyConstraint("user_id", "network", name=op.f("pk_known_networks")),
    )
    op.create_table(
        "password_resets",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        _ts("used_at", nullable=True),
        _user_fk("password_resets"),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_password_resets")),
    )
    _user_index("password_resets")
    op.create_table(
        "pending_signups",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_pending_signups")),
    )
    op.create_index(op.f("ix_pending_signups_email"), "pending_signups", ["email"])


def downgrade() -> None:
    op.drop_index(op.f("ix_pending_signups_email"), table_name="pending_signups")
    op.drop_table("pending_signups")
    for table in ("password_resets", "signin_alerts", "email_signins", "known_devices"):
        op.drop_index(op.f(f"ix_{table}_user_id"), table_name=table)
        op.drop_table(table)
    op.drop_table("known_networks")
