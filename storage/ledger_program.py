"""The ledger's operations, written once: the one authority for every ledger rule.

Why: SQLite and PostgreSQL run the ledger differently (statement by statement, and as
one function call per operation, because round trips capped PostgreSQL's throughput),
and two hand-written copies were kept equal only by tests and identical error texts. Each
operation is therefore described here once, as a short program of SQL statements
built with SQLAlchemy Core; `storage.ledger_interpreter` runs a program on SQLite and
`storage.ledger_plpgsql` compiles the same statements into a PL/pgSQL function that
`trt migrate` installs. A change to a rule (what covers a hold, which entries a post
writes, when a hold counts as expired, a refusal's values) is made here, and both
databases follow.

A program's steps are few on purpose, so both back ends stay small and obviously
alike: `Need` (a statement that must touch or return a row, or the program refuses
with the code and values its diagnosis selects), `Run` (a write that always
applies), `Record` (the transfer the program returns), `Point` (a fault point the
tests can break at) and `Call` (another program, for the three ways a hold ends).
Values are named `bindparam`s: bound values on SQLite, the function's parameters and
local variables in PL/pgSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    Executable,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    case,
    exists,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.types import TypeEngine

from storage.models import Account, AccountShard, Entry, Hold, IdempotencyKey, Transfer, table_of

accounts = table_of(Account)
transfers = table_of(Transfer)
entries = table_of(Entry)
holds = table_of(Hold)
keys = table_of(IdempotencyKey)
shards = table_of(AccountShard)

SCOPE = "ledger"
# Rows per system account for its running totals, chosen by the user's account id.
# With 16 concurrent writers, a given one shares its shard with another about a fifth
# of the time, and then waits for that one commit only; a balance sums at most 64 rows.
SHARDS = 64
TOTALS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
BEFORE_KEY = "before_key"  # a keyed program's last point: `<operation>:before_key`
# A diagnosis's code when every rule holds after all: a row changed between the statement
# and its diagnosis (a concurrent commit), so the call runs again instead of refusing.
RETRY = "retry"


# ------------------------------------------------------------------ the language


@dataclass(frozen=True)
class Value:
    """A named value of a program: a parameter, or a local a `Need` reads into."""

    name: str
    type: TypeEngine[Any]

    def __call__(self) -> BindParameter[Any]:
        return bindparam(self.name, type_=self.type)


@dataclass(frozen=True)
class Need:
    """`statement` must touch a row (an UPDATE) or return one (RETURNING, SELECT; its
    columns are read into `into`, in order). Otherwise the program refuses: `otherwise`
    selects one row, a `code` column and the refusal's values."""

    statement: Executable
    otherwise: Select[Any]
    into: tuple[Value, ...] = ()


@dataclass(frozen=True)
class Run:
    """A write that always applies."""

    statement: Executable


@dataclass(frozen=True)
class Record:
    """The INSERT ... RETURNING of the transfer the program returns."""

    statement: Executable


@dataclass(frozen=True)
class Point:
    """A fault point: tests raise here to roll the whole call back."""

    name: str


@dataclass(frozen=True)
class Call:
    """Runs `program` with `args` (a caller's `Value`, or a constant). Its transfer is
    the caller's; its refusal is the caller's too, after `recover[code]` ran."""

    program: str
    args: Mapping[str, Value | str | int | bool]
    recover: Mapping[str, Call] = field(default_factory=dict)


Step = Need | Run | Record | Point | Call


@dataclass(frozen=True)
class Program:
    """One ledger operation. A keyed one first claims its id (`id`, `hash`, `now`):
    a second call with the same id replays the first outcome, or is a conflict when its
    parameters differ; a refusal is kept with the key."""

    name: str
    params: tuple[Value, ...]
    steps: tuple[Step, ...]
    keyed: bool

    def __post_init__(self) -> None:
        # A refusal commits (with its key), so it must come before anything was written:
        # a Need may follow only reads; its own statement may write, all or nothing.
        wrote = False
        for step in self.steps:
            if isinstance(step, Need):
                if wrote:
                    raise ValueError(f"{self.name}: a Need after a write could refuse half a move")
                wrote = not isinstance(step.statement, Select)
            elif isinstance(step, Run | Record | Call):
                wrote = True

    @property
    def locals(self) -> tuple[Value, ...]:
        return tuple(value for step in self.steps if isinstance(step, Need) for value in step.into)


# ------------------------------------------------------------------ values

ID = Value("id", String(64))
HASH = Value("hash", String(64))
NOW = Value("now", holds.c.timeout_at.type)
ACCOUNT = Value("account", Integer())
AMOUNT = Value("amount", BigInteger())
SOURCE = Value("source", Integer())
DESTINATION = Value("destination", Integer())
REASON = Value("reason", transfers.c.reason.type)
NOTE = Value("note", transfers.c.note.type)
TIMEOUT_AT = Value("timeout_at", holds.c.timeout_at.type)
HOLD = Value("hold", String(64))
EXPIRY_ID = Value("expiry_id", String(64))
# resolve's
TRANSFER_ID = Value("transfer_id", String(64))
STATE = Value("state", holds.c.state.type)
KIND = Value("kind", transfers.c.kind.type)
CHARGE = Value("charge", BigInteger())
REQUIRE_UNEXPIRED = Value("require_unexpired", Boolean())
HOLD_ACCOUNT = Value("hold_account", Integer())
HOLD_AMOUNT = Value("hold_amount", BigInteger())
POSTED = Value("posted", BigInteger())
ORIGIN_CREDIT = Value("origin_credit", Integer())
ORIGIN_REASON = Value("origin_reason", transfers.c.reason.type)
ORIGIN_NOTE = Value("origin_note", transfers.c.note.type)
# a keyed program's: what its key keeps when the program refuses
OUTCOME = Value("outcome", JSON())
KEYED = (ID, HASH, NOW)


# ------------------------------------------------------------------ the dialect's few words


@dataclass(frozen=True)
class Dialect:
    """What differs between the databases' SQL: the upsert construct and JSON building."""

    name: str
    insert: Callable[..., Any]
    json_object: Callable[..., ColumnElement[Any]]


DIALECTS = {
    "sqlite": Dialect("sqlite", sqlite_insert, func.json_object),
    "postgresql": Dialect("postgresql", postgresql_insert, func.json_build_object),
}


# ------------------------------------------------------------------ the rules


def _covers(amount: ColumnElement[Any]) -> ColumnElement[bool]:
    """I2: a user's available balance stays >= 0 (the row's CHECK is the last line)."""
    a = accounts.c
    return or_(a.allow_negative, a.credits_posted - a.debits_posted - a.debits_pending >= amount)


def _short_or_unknown() -> Select[Any]:
    missing = not_(exists().where(accounts.c.id == ACCOUNT()))
    code = case((missing, "unknown_account"), else_="insufficient_funds")
    return select(code.label("code"), ACCOUNT().label("account"), AMOUNT().label("amount"))


def _move_user(
    column: str, delta: ColumnElement[Any], *, guarded: bool, user: Value = ACCOUNT
) -> Need:
    """The user's row goes first (every transfer touches exactly one user account, and
    the shard after it: two transfers never deadlock), so a refusal has changed nothing."""
    row = accounts.c
    stmt = update(accounts).where(row.id == user()).values({column: row[column] + delta})
    if guarded:
        return Need(stmt.where(_covers(delta)), _short_or_unknown())
    unknown = select(literal("unknown_account").label("code"), user().label("account"))
    return Need(stmt, unknown)


def _shard_add(
    sql: Dialect,
    account: ColumnElement[Any],
    user: ColumnElement[Any],
    **deltas: ColumnElement[Any],
) -> Run:
    """A system account's totals live on its shard for this user's bucket."""
    zero: ColumnElement[Any] = literal_column("0")
    # inline: no RETURNING of the key, which SQLAlchemy would add because `shard` is
    # an expression (a row fetched for nothing; in PL/pgSQL, an error).
    upsert = (
        sql.insert(shards)
        .inline()
        .values(
            account_id=account,
            shard=user % literal_column(str(SHARDS)),
            **{col: deltas.get(col, zero) for col in TOTALS},
        )
    )
    return Run(
        upsert.on_conflict_do_update(
            index_elements=[shards.c.account_id, shards.c.shard],
            set_={col: shards.c[col] + upsert.excluded[col] for col in TOTALS},
        )
    )


def _record(
    *,
    id: ColumnElement[Any],
    kind: ColumnElement[Any],
    debit: ColumnElement[Any],
    credit: ColumnElement[Any],
    amount: ColumnElement[Any],
    pending_id: ColumnElement[Any] | None,
    reason: ColumnElement[Any],
    note: ColumnElement[Any],
    lines: list[tuple[ColumnElement[Any], ColumnElement[Any], bool]],
) -> tuple[Step, ...]:
    """The transfer and its entries (account, signed amount, pending), which sum to 0;
    entries of 0 are not written, the rest in the order given."""
    rows = union_all(
        *(
            select(
                literal_column(str(n)).label("n"),
                account.label("account_id"),
                value.label("amount"),
                (true() if pending else false()).label("pending"),
            )
            for n, (account, value, pending) in enumerate(lines, 1)
        )
    ).subquery("line")
    transfer = (
        transfers.insert()
        .values(
            id=id,
            kind=kind,
            debit_account_id=debit,
            credit_account_id=credit,
            amount=amount,
            pending_id=pending_id if pending_id is not None else literal(None, String()),
            reason=reason,
            note=note,
            created_at=NOW(),
        )
        .returning(*transfers.c)
    )
    written = entries.insert().from_select(
        ["transfer_id", "account_id", "amount", "pending", "created_at"],
        select(id, rows.c.account_id, rows.c.amount, rows.c.pending, NOW())
        .where(rows.c.amount != 0)
        .order_by(rows.c.n),
    )
    return (Record(transfer), Run(written), Point("after_entries"))


# ------------------------------------------------------------------ the operations


def _one_way(
    sql: Dialect,
    name: str,
    system: Value,
    params: tuple[Value, ...],
    *,
    to_user: bool,
    pending: bool = False,
    then: tuple[Step, ...] = (),
) -> Program:
    """Money between the user and a system account, in one direction: to the user
    (unguarded: a credit can always be taken) or from the user (guarded by I2)."""
    phase = "pending" if pending else "posted"
    user_side, system_side = ("credits", "debits") if to_user else ("debits", "credits")
    debit, credit = (system, ACCOUNT) if to_user else (ACCOUNT, system)
    return Program(
        name,
        (*KEYED, *params),
        (
            _move_user(f"{user_side}_{phase}", AMOUNT(), guarded=not to_user),
            Point("after_account_update"),
            _shard_add(sql, system(), ACCOUNT(), **{f"{system_side}_{phase}": AMOUNT()}),
            Point("after_account_update"),
            *_record(
                id=ID(),
                kind=literal(name),
                debit=debit(),
                credit=credit(),
                amount=AMOUNT(),
                pending_id=None,
                reason=REASON(),
                note=NOTE(),
                lines=[(debit(), -AMOUNT(), pending), (credit(), AMOUNT(), pending)],
            ),
            *then,
        ),
        keyed=True,
    )


def _credit(sql: Dialect) -> Program:
    """Money in: from a system account (top-ups, bonus, adjustments) to the user."""
    params = (ACCOUNT, AMOUNT, SOURCE, REASON, NOTE)
    return _one_way(sql, "credit", SOURCE, params, to_user=True)


def _debit(sql: Dialect) -> Program:
    """Money out of the available balance at once; never below zero."""
    params = (ACCOUNT, AMOUNT, DESTINATION, REASON, NOTE)
    return _one_way(sql, "debit", DESTINATION, params, to_user=False)


def _hold(sql: Dialect) -> Program:
    """Sets money aside until a post, a void or its timeout."""
    pending = holds.insert().values(
        id=ID(),
        account_id=ACCOUNT(),
        amount=AMOUNT(),
        state=literal("pending"),
        timeout_at=TIMEOUT_AT(),
    )
    params = (ACCOUNT, AMOUNT, TIMEOUT_AT, DESTINATION, REASON, NOTE)
    return _one_way(
        sql, "hold", DESTINATION, params, to_user=False, pending=True, then=(Run(pending),)
    )


def _resolve(sql: Dialect) -> Program:
    """Moves a pending hold to `state`, exactly one caller wins (I3), and writes the
    transfer that releases it and, for a post, charges `charge` (None: all of it), at
    most the held amount (I4). Unkeyed: post and void call it under their key, and the
    sweeper with the expiry's deterministic id."""
    h = holds.c
    charge = func.coalesce(CHARGE(), h.amount)
    won = (
        update(holds)
        .where(
            h.id == HOLD(),
            h.state == "pending",
            charge <= h.amount,
            or_(not_(REQUIRE_UNEXPIRED()), h.timeout_at > NOW()),
        )
        .values(
            state=STATE(),
            resolved_at=NOW(),
            resolution_id=TRANSFER_ID(),
            posted_amount=case((STATE() == "posted", charge), else_=0),
        )
        .returning(h.account_id, h.amount, h.posted_amount)
    )
    # Why not: read after the update, so a post, void or expiry that committed since
    # is seen. The first rule that fails names the refusal; none (the hold changed in
    # between) runs the call again.
    found = holds.alias("found")
    f = found.c
    found_charge = func.coalesce(CHARGE(), f.amount)
    why = (
        select(
            case(
                (f.id.is_(None), "unknown_hold"),
                (found_charge > f.amount, "exceeds_hold"),
                (f.state != "pending", "hold_not_pending"),
                (and_(REQUIRE_UNEXPIRED(), f.timeout_at <= NOW()), "hold_expired"),
                else_=RETRY,
            ).label("code"),
            HOLD().label("hold"),
            found_charge.label("charge"),
            f.amount.label("amount"),
            f.state.label("state"),
            f.timeout_at.label("timeout_at"),
        )
        .select_from(select(literal_column("1").label("one")).subquery("one"))
        .outerjoin(found, f.id == HOLD())
    )
    t = transfers.c
    origin = select(t.credit_account_id, t.reason, t.note).where(t.id == HOLD())
    return Program(
        "resolve",
        (TRANSFER_ID, HOLD, STATE, KIND, CHARGE, REQUIRE_UNEXPIRED, NOW),
        (
            # The hold's transfer never changes: read before the hold's row is written.
            Need(origin, why, into=(ORIGIN_CREDIT, ORIGIN_REASON, ORIGIN_NOTE)),
            Need(won, why, into=(HOLD_ACCOUNT, HOLD_AMOUNT, POSTED)),
            Run(
                update(accounts)
                .where(accounts.c.id == HOLD_ACCOUNT())
                .values(
                    debits_pending=accounts.c.debits_pending - HOLD_AMOUNT(),
                    debits_posted=accounts.c.debits_posted + POSTED(),
                )
            ),
            Point("after_account_update"),
            _shard_add(
                sql,
                ORIGIN_CREDIT(),
                HOLD_ACCOUNT(),
                credits_pending=-HOLD_AMOUNT(),
                credits_posted=POSTED(),
            ),
            Point("after_account_update"),
            *_record(
                id=TRANSFER_ID(),
                kind=KIND(),
                debit=HOLD_ACCOUNT(),
                credit=ORIGIN_CREDIT(),
                amount=POSTED(),
                pending_id=HOLD(),
                reason=ORIGIN_REASON(),
                note=ORIGIN_NOTE(),
                lines=[
                    (HOLD_ACCOUNT(), HOLD_AMOUNT(), True),
                    (ORIGIN_CREDIT(), -HOLD_AMOUNT(), True),
                    (HOLD_ACCOUNT(), -POSTED(), False),
                    (ORIGIN_CREDIT(), POSTED(), False),
                ],
            ),
        ),
        keyed=False,
    )


def expiry(hold: Value | str, transfer_id: Value | str) -> Call:
    """A hold's release at its timeout: charges nothing, whatever the clock says now."""
    return Call(
        "resolve",
        {
            "transfer_id": transfer_id,
            "hold": hold,
            "state": "expired",
            "kind": "expire",
            "charge": 0,
            "require_unexpired": False,
            "now": NOW,
        },
    )


def _post(sql: Dialect) -> Program:
    """Charges up to the held amount; the rest is released. After the timeout the hold
    is released at once (not left to the sweeper) and the post refused (S8)."""
    return Program(
        "post",
        (*KEYED, HOLD, AMOUNT, EXPIRY_ID),
        (
            Call(
                "resolve",
                {
                    "transfer_id": ID,
                    "hold": HOLD,
                    "state": "posted",
                    "kind": "post",
                    "charge": AMOUNT,
                    "require_unexpired": True,
                    "now": NOW,
                },
                recover={"hold_expired": expiry(HOLD, EXPIRY_ID)},
            ),
        ),
        keyed=True,
    )


def _void(sql: Dialect) -> Program:
    """Releases the whole hold."""
    return Program(
        "void",
        (*KEYED, HOLD),
        (
            Call(
                "resolve",
                {
                    "transfer_id": ID,
                    "hold": HOLD,
                    "state": "voided",
                    "kind": "void",
                    "charge": 0,
                    "require_unexpired": False,
                    "now": NOW,
                },
            ),
        ),
        keyed=True,
    )


# ------------------------------------------------------------------ a keyed program's claim


@dataclass(frozen=True)
class Claim:
    """The statements of a keyed program's claim, the same for every program."""

    take: Executable  # inserts the key with a success's outcome; no row when it exists
    found: Select[Any]  # request_hash, outcome of the existing key
    keep_refusal: Executable  # the key's outcome becomes the refusal (`outcome`)


@cache
def claim(dialect: str) -> Claim:
    sql = DIALECTS[dialect]
    k = keys.c
    mine = and_(k.scope == SCOPE, k.key == ID())
    take = (
        sql.insert(keys)
        .values(
            scope=literal(SCOPE),
            key=ID(),
            request_hash=HASH(),
            outcome=sql.json_object(literal("transfer"), ID()),
            created_at=NOW(),
        )
        .on_conflict_do_nothing()
    )
    return Claim(
        take=take,
        found=select(k.request_hash, k.outcome).where(mine),
        keep_refusal=update(keys).where(mine).values(outcome=OUTCOME()),
    )


@cache
def replayed_transfer() -> Select[Any]:
    """The transfer a replayed success returns (`id`: the one its key stored)."""
    return select(transfers).where(transfers.c.id == ID())


@cache
def programs(dialect: str) -> dict[str, Program]:
    sql = DIALECTS[dialect]
    built = (_credit(sql), _debit(sql), _hold(sql), _resolve(sql), _post(sql), _void(sql))
    return {program.name: program for program in built}
