"""exactly-once effects: one audit row per admin command, orphan payments

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

- `admin_audit.effect_key`: the command's cause (chat id and message id), unique, so
  a redelivered command is audited once; the row commits with the command's ledger
  transfer.
- `payments.order_id` may be NULL: a `successful_payment` for an order the bot does
  not know is kept as an orphan payment (credit 0) that /refund can give back;
  `payments.refund_key` names the command that refunds it, so its redelivery resumes;
  `payments.receipt_at` says the receipt went out, so a redelivery sends a lost one;
  `promo_redemptions.run_key` names the screen run that claimed a code, so that run,
  resumed after an outage, is told it worked.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("admin_audit", schema=None) as batch_op:
        batch_op.add_column(sa.Column("effect_key", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_admin_audit_effect_key"), ["effect_key"], unique=True)
    with op.batch_alter_table("promo_redemptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_key", sa.String(length=64), nullable=True))
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.alter_column("order_id", existing_type=sa.String(length=32), nullable=True)
        batch_op.add_column(sa.Column("refund_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("receipt_at", sa.DateTime(timezone=True), nullable=True))
    # Payments made before this revision had their receipts sent then.
    op.execute("UPDATE payments SET receipt_at = created_at")


def downgrade() -> None:
    # Orphan payments have no order to point at: they cannot survive the old schema.
    op.execute("DELETE FROM payments WHERE order_id IS NULL")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("receipt_at")
        batch_op.drop_column("refund_key")
        batch_op.alter_column("order_id", existing_type=sa.String(length=32), nullable=False)
    with op.batch_alter_table("promo_redemptions", schema=None) as batch_op:
        batch_op.drop_column("run_key")
    with op.batch_alter_table("admin_audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_admin_audit_effect_key"))
        batch_op.drop_column("effect_key")
