"""OpenID flows: a one-time finishing ticket, and the ``confirm`` status (R-OIDC-01).

Flows live ten minutes and hold nothing anyone needs afterwards, so the table is
rebuilt rather than altered (SQLite would rebuild it for the new CHECK anyway);
a sign-in in progress during the upgrade is simply started again.

Revision ID: 0009_oidc_flow_ticket
Revises: 0008_passkeys
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_oidc_flow_ticket"
down_revision: str | Sequence[str] | None = "0008_passkeys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXED = ("binding_hash", "user_id", "expires_at")


def _create_flows(statuses: str, *, ticket: bool) -> None:
    extra: list[sa.schema.SchemaItem] = []
    if ticket:
        extra = [
            sa.Column("ticket_hash", sa.String(length=64), nullable=True),
            sa.UniqueConstraint("ticket_hash", name=op.f("uq_oidc_flows_ticket_hash")),
        ]
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
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issuer", sa.String(length=255), nullable=True),
        sa.Column("subject", sa.String(length=255), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("email_verified", sa.Boolean(), nullable=True),
        *extra,
        sa.CheckConstraint("purpose IN ('signin', 'link')", name=op.f("ck_oidc_flows_purpose")),
        sa.CheckConstraint(f"status IN ({statuses})", name=op.f("ck_oidc_flows_status")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_oidc_flows_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oidc_flows")),
        sa.UniqueConstraint("state_hash", name=op.f("uq_oidc_flows_state_hash")),
    )
    for name in _INDEXED:
        op.create_index(op.f(f"ix_oidc_flows_{name}"), "oidc_flows", [name])


def _drop_flows() -> None:
    for name in _INDEXED:
        op.drop_index(op.f(f"ix_oidc_flows_{name}"), table_name="oidc_flows")
    op.drop_table("oidc_flows")


def upgrade() -> None:
    _drop_flows()
    _create_flows("'started', 'claimed', 'verified', 'link', 'confirm', 'done'", ticket=True)


def downgrade() -> None:
    _drop_flows()
    _create_flows("'started', 'claimed', 'verified', 'link', 'done'", ticket=False)
