"""OpenID Connect sign-in (Google, Apple, generic): linked identities, flows, has_password.

Revision ID: 0005_oidc
Revises: 0004_email
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_oidc"
down_revision: str | Sequence[str] | None = "0004_email"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _user_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["user_id"], ["users.id"], name=op.f(f"fk_{table}_user_id_users"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("has_password", sa.Boolean(), nullable=False, server_default=sa.true()),
    )
    op.create_table(
        "oidc_identities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("issuer", sa.String(length=255), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        _ts("created_at"),
        _ts("last_used_at", nullable=True),
        _user_fk("oidc_identities"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oidc_identities")),
        sa.UniqueConstraint("issuer", "subject", name=op.f("uq_oidc_identities_issuer")),
    )
    op.create_index(op.f("ix_oidc_identities_user_id"), "oidc_identities", ["user_id"])
    op.create_table(
        "oidc_flows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("binding_hash", sa.String(length=64), nullable=False),
        sa.Column("nonce_hash", sa.String(length=64), nullable=False),
        sa.Column("verifier_sealed", sa.LargeBinary(length=128), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("purpose", sa.String(length=8), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("next_path", sa.String(length=2048), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        sa.Column("issuer", sa.String(length=255), nullable=True),
        sa.Column("subject", sa.String(length=255), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("email_verified", sa.Boolean(), nullable=True),
        sa.CheckConstraint("purpose IN ('signin', 'link')", name=op.f("ck_oidc_flows_purpose")),
        sa.CheckConstraint(
            "status IN ('started', 'claimed', 'verified', 'link', 'done')",
            name=op.f("ck_oidc_flows_status"),
        ),
        _user_fk("oidc_flows"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oidc_flows")),
        sa.UniqueConstraint("state_hash", name=op.f("uq_oidc_flows_state_hash")),
    )
    op.create_index(op.f("ix_oidc_flows_binding_hash"), "oidc_flows", ["binding_hash"])
    op.create_index(op.f("ix_oidc_flows_user_id"), "oidc_flows", ["user_id"])
    op.create_index(op.f("ix_oidc_flows_expires_at"), "oidc_flows", ["expires_at"])


def downgrade() -> None:
    for name in ("expires_at", "user_id", "binding_hash"):
        op.drop_index(op.f(f"ix_oidc_flows_{name}"), table_name="oidc_flows")
    op.drop_table("oidc_flows")
    op.drop_index(op.f("ix_oidc_identities_user_id"), table_name="oidc_identities")
    op.drop_table("oidc_identities")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("has_password")
