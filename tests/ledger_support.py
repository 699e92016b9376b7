"""Shared by the ledger tests: a clock the test moves, and the invariant checks (MONEY.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.ledger import ACCOUNT_TOTALS_SQL

START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def check_invariants(engine: AsyncEngine) -> None:
    """I1, I2, I3, I4 and I7 over the whole database, straight from SQL."""
    async with engine.connect() as conn:
        unbalanced = (
            await conn.execute(
                text("SELECT transfer_id FROM entries GROUP BY transfer_id HAVING SUM(amount) <> 0")
            )
        ).all()
        assert unbalanced == [], f"I1: transfers whose entries do not sum to zero: {unbalanced}"
        total = await conn.scalar(text("SELECT COALESCE(SUM(amount), 0) FROM entries"))
        assert total == 0, f"I1: entries sum to {total}"
        mismatched = (
            await conn.execute(
                text(
                    "SELECT a.id FROM (" + ACCOUNT_TOTALS_SQL + ") a LEFT JOIN ("
                    "  SELECT account_id,"
                    "    SUM(CASE WHEN pending THEN 0 ELSE amount END) AS posted,"
                    "    SUM(CASE WHEN pending THEN amount ELSE 0 END) AS pending"
                    "  FROM entries GROUP BY account_id) e ON e.account_id = a.id "
                    "WHERE a.credits_posted - a.debits_posted <> COALESCE(e.posted, 0) "
                    "   OR a.credits_pending - a.debits_pending <> COALESCE(e.pending, 0)"
                )
            )
        ).all()
        assert mismatched == [], f"I7: account totals differ from their entries: {mismatched}"
        negative = (
            await conn.execute(
                text(
                    "SELECT id FROM accounts WHERE NOT allow_negative "
                    "AND credits_posted - debits_posted - debits_pending < 0"
                )
            )
        ).all()
        assert negative == [], f"I2: negative available balance: {negative}"
        pending_mismatch = (
            await conn.execute(
                text(
                    "SELECT a.id FROM accounts a WHERE NOT a.allow_negative AND a.debits_pending "
                    "<> (SELECT COALESCE(SUM(h.amount), 0) FROM holds h "
                    "    WHERE h.account_id = a.id AND h.state = 'pending')"
                )
            )
        ).all()
        assert pending_mismatch == [], f"pending debits differ from open holds: {pending_mismatch}"
        resolutions = (
            await conn.execute(
                text(
                    "SELECT h.id FROM holds h WHERE "
                    "(h.state = 'pending') <> (h.resolution_id IS NULL) "
                    "OR (SELECT COUNT(*) FROM transfers t WHERE t.pending_id = h.id) "
                    "   <> CASE WHEN h.state = 'pending' THEN 0 ELSE 1 END "
                    "OR COALESCE(h.posted_amount, 0) > h.amount"
                )
            )
        ).all()
        assert resolutions == [], f"I3/I4: holds not resolved exactly once: {resolutions}"
