"""ledger: system account shards

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

`account_shards`: a system account's running totals spread over rows chosen by the
user on the other side, so concurrent transfers no longer queue on the one `revenue`
row. Totals are the account row's plus its shards'.

This revision also created PostgreSQL functions for the ledger, a hand-written copy
of its Python path. They are now generated from `storage.ledger_program` and
installed by `trt migrate` after the migrations (`storage.ledger_plpgsql`): code
derived from the repository, not schema, so no migration keeps a copy of it. A
database migrated before keeps the old functions (a rollback still finds them) and
gets the generated ones beside them; going below this revision drops every ledger
function there is.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TOTALS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")

# Every function named ledger_* in the current schema, whichever code installed it.
DROP_LEDGER_FUNCTIONS = r"""
DO $$
DECLARE
  f regprocedure;
BEGIN
  FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
           WHERE p.proname LIKE 'ledger\_%'
             AND p.pronamespace = current_schema()::regnamespace LOOP
    EXECUTE 'DROP FUNCTION ' || f;
  END LOOP;
END $$
"""


def upgrade() -> None:
    op.create_table(
        "account_shards",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in TOTALS),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_account_shards_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("account_id", "shard", name=op.f("pk_account_shards")),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP_LEDGER_FUNCTIONS)
    # Fold the shards back into their account rows, so no total is lost.
    sums = ", ".join(
        f"{name} = {name} + (SELECT COALESCE(SUM(s.{name}), 0) FROM account_shards s "
        "WHERE s.account_id = accounts.id)"
        for name in TOTALS
    )
    op.execute(f"UPDATE accounts SET {sums} WHERE id IN (SELECT account_id FROM account_shards)")
    op.drop_table("account_shards")
