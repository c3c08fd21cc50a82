"""Offline alerts: an owner's opt-in mail when a home stays offline (issue #14).

Revision ID: 0012_offline_alerts
Revises: 0011_sharing_expiry
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_offline_alerts"
down_revision: str | Sequence[str] | None = "0011_sharing_expiry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "offline_alerts",
        sa.Column("instance_id", sa.String(length=26), nullable=False),
        sa.Column("after_minutes", sa.Integer(), nullable=False),
        sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_offline_alerts_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_offline_alerts")),
    )


def downgrade() -> None:
    op.drop_table("offline_alerts")
