"""Abuse-control table; link tenant sessions and hand-offs to their account session.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "throttle",
        sa.Column("key", sa.String(length=160), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        _ts("window_start"),
        _ts("next_allowed_at", nullable=True),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_throttle")),
    )
    op.create_index(op.f("ix_throttle_updated_at"), "throttle", ["updated_at"])
    # Plain nullable columns: ADD COLUMN works in place on SQLite and PostgreSQL.
    op.add_column("web_sessions", sa.Column("parent_session_id", sa.Integer(), nullable=True))
    op.create_index(
        op.f("ix_web_sessions_parent_session_id"), "web_sessions", ["parent_session_id"]
    )
    op.add_column("handoff_codes", sa.Column("parent_session_id", sa.Integer(), nullable=True))
    op.create_index(
        op.f("ix_handoff_codes_parent_session_id"), "handoff_codes", ["parent_session_id"]
    )


def downgrade() -> None:
    with op.batch_alter_table("handoff_codes") as batch:
        batch.drop_index(batch.f("ix_handoff_codes_parent_session_id"))
        batch.drop_column("parent_session_id")
    with op.batch_alter_table("web_sessions") as batch:
        batch.drop_index(batch.f("ix_web_sessions_parent_session_id"))
        batch.drop_column("parent_session_id")
    op.drop_index(op.f("ix_throttle_updated_at"), table_name="throttle")
    op.drop_table("throttle")
