"""Certificates in a cluster: the sealed certificate store, the renewal lease, HTTP-01 answers.

Revision ID: 0014_certificates
Revises: 0013_integrations
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0014_certificates"
down_revision: str | Sequence[str] | None = "0013_integrations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("fence", sa.BigInteger(), nullable=False),
        sa.Column("chain_pem", sa.Text(), nullable=False),
        sa.Column("key_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("written_by", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('account', 'tenant')", name=op.f("ck_certificates_kind")),
        sa.PrimaryKeyConstraint("kind", name=op.f("pk_certificates")),
    )
    op.create_table(
        "acme_challenges",
        sa.Column("token", sa.String(length=256), nullable=False),
        sa.Column("key_authorization", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_acme_challenges")),
    )
    lease = op.create_table(
        "renewal_leases",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_renewal_leases")),
    )
    # The one lease row exists from the start, so taking it is always an UPDATE of a
    # locked row, never a race between two INSERTs.
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    if op.get_bind().dialect.name == "sqlite":
        epoch = epoch.replace(tzinfo=None)  # UTCDateTime stores SQLite values without offset
    op.bulk_insert(lease, [{"name": "acme", "token": 0, "holder": None, "expires_at": epoch}])


def downgrade() -> None:
    op.drop_table("renewal_leases")
    op.drop_table("acme_challenges")
    op.drop_table("certificates")
