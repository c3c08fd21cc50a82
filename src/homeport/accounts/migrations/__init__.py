"""Alembic migrations of the accounts database (run by ``Database.migrate()``)."""
