"""Sharing that ends by itself: a membership's end date and an app link's expiry.

Revision ID: 0011_sharing_expiry
Revises: 0010_email_change
Create Date: 2027-01-12
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_sharing_expiry"
down_revision: str | Sequence[str] | None = "0010_email_change"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("instance_members", "app_links")


def upgrade() -> None:
    for table in _TABLES:
        op.add_column(table, sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        op.create_index(op.f(f"ix_{table}_expires_at"), table, ["expires_at"])


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(batch.f(f"ix_{table}_expires_at"))
            batch.drop_column("expires_at")
