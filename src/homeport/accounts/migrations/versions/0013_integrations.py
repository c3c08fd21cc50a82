"""Integrations: per home, whether webhooks and voice assistants may pass the gate.

Revision ID: 0013_integrations
Revises: 0012_offline_alerts
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_integrations"
down_revision: str | Sequence[str] | None = "0012_offline_alerts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "instance_integrations",
        sa.Column("instance_id", sa.String(length=26), nullable=False),
        sa.Column("webhooks", sa.Boolean(), nullable=False),
        sa.Column("voice", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_instance_integrations_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_instance_integrations")),
    )


def downgrade() -> None:
    op.drop_table("instance_integrations")
