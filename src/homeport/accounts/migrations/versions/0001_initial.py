"""Initial accounts schema: users, instances, members, sessions, link and hand-off codes.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        _ts("created_at"),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("addon_public_key", sa.String(length=64), nullable=False),
        _ts("created_at"),
        _ts("last_connected_at", nullable=True),
        _ts("last_disconnected_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_instances_owner_id_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
        sa.UniqueConstraint("addon_public_key", name=op.f("uq_instances_addon_public_key")),
    )
    op.create_index(op.f("ix_instances_owner_id"), "instances", ["owner_id"])
    op.create_table(
        "instance_members",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(length=26), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_instance_members_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_instance_members_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "instance_id", name=op.f("pk_instance_members")),
    )
    op.create_index(op.f("ix_instance_members_instance_id"), "instance_members", ["instance_id"])
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("instance_id", sa.String(length=26), nullable=True),
        _ts("created_at"),
        _ts("last_seen_at"),
        _ts("idle_expires_at"),
        _ts("absolute_expires_at"),
        _ts("revoked_at", nullable=True),
        sa.Column("user_agent", sa.String(length=256), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.CheckConstraint("kind IN ('account', 'tenant')", name=op.f("ck_web_sessions_kind")),
        sa.CheckConstraint(
            "(kind = 'tenant' AND instance_id IS NOT NULL)"
            " OR (kind = 'account' AND instance_id IS NULL)",
            name=op.f("ck_web_sessions_tenant_instance"),
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_web_sessions_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_web_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_web_sessions_token_hash")),
    )
    op.create_index(op.f("ix_web_sessions_user_id"), "web_sessions", ["user_id"])
    op.create_index(op.f("ix_web_sessions_instance_id"), "web_sessions", ["instance_id"])
    op.create_table(
        "link_codes",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("addon_public_key", sa.String(length=64), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        _ts("used_at", nullable=True),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_link_codes")),
    )
    op.create_index(op.f("ix_link_codes_addon_public_key"), "link_codes", ["addon_public_key"])
    op.create_table(
        "handoff_codes",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(length=26), nullable=False),
        sa.Column("binding_hash", sa.String(length=64), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        _ts("used_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_handoff_codes_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_handoff_codes_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_handoff_codes")),
    )
    op.create_index(op.f("ix_handoff_codes_user_id"), "handoff_codes", ["user_id"])
    op.create_index(op.f("ix_handoff_codes_instance_id"), "handoff_codes", ["instance_id"])


def downgrade() -> None:
    op.drop_table("handoff_codes")
    op.drop_table("link_codes")
    op.drop_table("web_sessions")
    op.drop_table("instance_members")
    op.drop_table("instances")
    op.drop_table("users")
