"""Users and their accounts: created on first contact, idempotently."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import one_statement
from storage.db import insert_if_absent
from storage.models import Account, User, table_of

_users = table_of(User)
_accounts = table_of(Account)


async def ensure_user(
    engine: AsyncEngine,
    user_id: int,
    *,
    language: str = "ru",
    username: str | None = None,
    referrer_id: int | None = None,
) -> int:
    """The user's account id; the user and the account are created on first call.

    The referrer is kept only from the first contact and never the user themself.
    A known user is only read: every /start and every order calls this, and the
    inserts below change nothing for a user who has an account (one read instead of
    a write transaction, which on SQLite waits for every other writer).
    """
    known = await find_account(engine, user_id)
    if known is not None:
        return known
    # Users are never deleted, so a referrer found now is there when the rows are written.
    if referrer_id == user_id or (
        referrer_id is not None and await _find_user(engine, referrer_id) is None
    ):
        referrer_id = None
    dialect = engine.dialect.name
    user = dict(
        id=user_id,
        username=username,
        language=language,
        created_at=datetime.now(UTC),
        referrer_id=referrer_id,
        is_active=True,
    )
    account = dict(
        user_id=user_id,
        allow_negative=False,
        debits_pending=0,
        debits_posted=0,
        credits_pending=0,
        credits_posted=0,
    )
    # One transaction (on SQLite on the loop: through aiosqlite's thread it was most of
    # a first /start's CPU). The account's id comes back if this call made it, else it
    # is read (a second /start of the same user got there first).
    made = await one_statement.write_each(
        engine,
        [
            (insert_if_absent(dialect, _users, ["id"], user), {}),
            (
                insert_if_absent(dialect, _accounts, ["user_id"], account).returning(
                    _accounts.c.id
                ),
                {},
            ),
        ],
    )
    found = int(made[0].id) if made else await find_account(engine, user_id)
    assert found is not None
    return found


async def find_account(engine: AsyncEngine, user_id: int) -> int | None:
    """The user's account id, or None for a user never seen; reads only, so a screen or
    an admin's look-up never creates rows (nor takes SQLite's write lock)."""
    row = await one_statement.read(
        engine, select(_accounts.c.id).where(_accounts.c.user_id == user_id)
    )
    return int(row.id) if row is not None else None


async def _find_user(engine: AsyncEngine, user_id: int) -> int | None:
    row = await one_statement.read(engine, select(_users.c.id).where(_users.c.id == user_id))
    return int(row.id) if row is not None else None


async def referrer_of(engine: AsyncEngine, user_id: int) -> int | None:
    row = await one_statement.read(
        engine, select(_users.c.referrer_id).where(_users.c.id == user_id)
    )
    return int(row.referrer_id) if row is not None and row.referrer_id is not None else None


async def set_active(engine: AsyncEngine, user_id: int, active: bool) -> bool:
    """Marks whether the bot can reach the user (False: they blocked it); True if it changed.

    Only known users: one who blocked the bot before ever being stored has nothing to mark.
    Every /start calls this for a user who nearly always is active already, so the mark
    is read first and written only when it changes: a read, not a write that changes
    nothing (on SQLite that would wait for every other writer). The write still checks
    the mark, so two calls racing change it once.
    """
    now = await one_statement.read(engine, select(_users.c.is_active).where(_users.c.id == user_id))
    if now is None or bool(now.is_active) == active:
        return False
    changed = await one_statement.write(
        engine,
        update(_users)
        .where(_users.c.id == user_id, _users.c.is_active != active)
        .values(is_active=active),
        {},
    )
    return bool(changed)
