"""S16: random sequences of ledger calls against an in-memory model (Hypothesis stateful).

The rules: top-ups, admin debits, holds, full and partial posts, voids, repeats of an
earlier id with the same parameters (the first outcome again, I6/I9) and with other
parameters (IdempotencyConflict), crashes (a fault hook raises mid-transaction, so the
call rolls back; its retry with the same id must behave as if fresh), clock jumps and
expiry sweeps (I8). After every step the model must equal the database for every
account and hold of the example; after every example, I1-I4 and I7 must hold over the
whole database (every call is one transaction that only adds balanced rows, so a rule
broken at some step stays broken until the example ends; checking the whole, growing
database after every step cost a third of the test's time).

One database per backend serves every example: each example makes its own users and
uses its own id prefix, and its clock starts a day after the previous example's, so
holds an earlier example left pending are simply due (and swept) in the next one.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import create_engine
from storage.ledger import (
    ExceedsHold,
    HoldExpired,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientFunds,
    Ledger,
    LedgerError,
    TransferRecord,
    UnknownHold,
    utc,
)
from storage.models import Account, Hold, IdempotencyKey, table_of
from storage.settings import DatabaseSettings
from storage.users import ensure_user
from tests.ledger_support import START, Clock, check_invariants

_T = TypeVar("_T")

_accounts = table_of(Account)
_holds = table_of(Hold)
_keys = table_of(IdempotencyKey)

SETTINGS = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SWEEP_LIMIT = 100_000  # every due hold, the earlier examples' included (I8 is checked globally)
FAULT_POINTS = ("after_account_update", "after_entries", "before_key")
OPS = ("credit", "debit", "hold", "post", "void")
EXPIRES_IN = st.one_of(st.sampled_from([1, 30, 60, 90]), st.integers(1, 600))
CLOCK_JUMPS = st.one_of(st.sampled_from([1, 29, 30, 31, 59, 60, 61, 600]), st.integers(1, 900))

_examples = itertools.count()
_users = itertools.count(1)


class Crash(Exception):
    """A simulated crash at a fault point: the call's transaction rolls back mid-way."""


@dataclass
class ModelAccount:
    posted: int = 0
    pending: int = 0

    @property
    def available(self) -> int:
        return self.posted - self.pending


@dataclass
class ModelHold:
    account: int
    amount: int
    timeout_at: datetime
    state: str = "pending"
    posted_amount: int | None = None
    resolution_id: str | None = None


@dataclass
class Call:
    """A completed keyed call and its first outcome."""

    op: str
    id: str
    args: dict[str, Any]
    outcome: TransferRecord | LedgerError


class LedgerMachine(RuleBasedStateMachine):
    loop: ClassVar[asyncio.AbstractEventLoop]
    engine: ClassVar[AsyncEngine]

    def __init__(self) -> None:
        super().__init__()
        example = next(_examples)
        self.prefix = f"e{example}-"
        self.clock = Clock(START + timedelta(days=example))
        self.armed: tuple[str, int] | None = None
        self.hits = 0
        self.ledger = Ledger(self.engine, clock=self.clock, fault=self._fault)
        self.accounts: dict[int, ModelAccount] = {}
        self.holds: dict[str, ModelHold] = {}
        self.calls: list[Call] = []
        self.crashed: list[tuple[str, str, dict[str, Any]]] = []
        self.ids = itertools.count()

    # ------------------------------------------------------------ plumbing

    def run(self, coro: Awaitable[_T]) -> _T:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def _fault(self, point: str) -> None:
        if self.armed is None:
            return
        target, nth = self.armed
        if (point.endswith(":before_key") and target == "before_key") or point == target:
            self.hits += 1
            if self.hits == nth:
                self.armed = None
                raise Crash(point)

    def new_id(self, op: str) -> str:
        return f"{self.prefix}{op}{next(self.ids)}"

    async def invoke(
        self, op: str, transfer_id: str, args: dict[str, Any], ledger: Ledger | None = None
    ) -> TransferRecord | LedgerError:
        ledger = ledger or self.ledger
        try:
            if op == "credit":
                return await ledger.credit(
                    transfer_id,
                    args["account"],
                    args["amount"],
                    source=args["source"],
                    reason="topup",
                )
            if op == "debit":
                return await ledger.debit(
                    transfer_id,
                    args["account"],
                    args["amount"],
                    destination="adjustments",
                    reason="admin",
                )
            if op == "hold":
                return await ledger.hold(
                    transfer_id,
                    args["account"],
                    args["amount"],
                    expires_in=timedelta(seconds=args["expires_in"]),
                    reason="generation",
                )
            if op == "post":
                return await ledger.post(transfer_id, args["hold"], args["amount"])
            if op == "void":
                return await ledger.void(transfer_id, args["hold"])
        except LedgerError as exc:
            return exc
        raise AssertionError(f"unknown op {op}")

    # ------------------------------------------------------------ the model

    def predict(self, op: str, args: dict[str, Any]) -> type[LedgerError] | None:
        """The refusal the model expects for a fresh call now, or None for success."""
        if op in ("debit", "hold"):
            if self.accounts[args["account"]].available < args["amount"]:
                return InsufficientFunds
        if op in ("post", "void"):
            hold = self.holds.get(args["hold"])
            if hold is None:
                return UnknownHold
            charge = args.get("amount")
            if op == "post" and charge is not None and charge > hold.amount:
                return ExceedsHold
            if hold.state != "pending":
                return HoldNotPending
            if op == "post" and self.clock.now >= hold.timeout_at:
                return HoldExpired
        return None

    def release(self, hold_id: str, state: str, resolution: str, charge: int) -> None:
        hold = self.holds[hold_id]
        assert hold.state == "pending"
        account = self.accounts[hold.account]
        account.pending -= hold.amount
        account.posted -= charge
        hold.state, hold.posted_amount, hold.resolution_id = state, charge, resolution

    def settle(
        self, op: str, transfer_id: str, args: dict[str, Any], outcome: TransferRecord | LedgerError
    ) -> None:
        """Checks a fresh call's outcome against the model, then applies it."""
        expected = self.predict(op, args)
        if expected is not None:
            assert isinstance(outcome, expected), (op, args, outcome)
            if expected is HoldNotPending:
                assert self.holds[args["hold"]].state in outcome.message
            if expected is HoldExpired:  # released now, not left for the sweeper (S8)
                self.release(args["hold"], "expired", "x:" + args["hold"], 0)
            self.calls.append(Call(op, transfer_id, args, outcome))
            return
        assert isinstance(outcome, TransferRecord), (op, args, outcome)
        assert (outcome.id, outcome.kind) == (transfer_id, op)
        if op == "credit":
            assert (outcome.credit_account_id, outcome.amount) == (args["account"], args["amount"])
            self.accounts[args["account"]].posted += args["amount"]
        elif op == "debit":
            assert (outcome.debit_account_id, outcome.amount) == (args["account"], args["amount"])
            self.accounts[args["account"]].posted -= args["amount"]
        elif op == "hold":
            assert (outcome.debit_account_id, outcome.amount) == (args["account"], args["amount"])
            self.accounts[args["account"]].pending += args["amount"]
            self.holds[transfer_id] = ModelHold(
                args["account"],
                args["amount"],
                self.clock.now + timedelta(seconds=args["expires_in"]),
            )
        elif op == "post":
            hold = self.holds[args["hold"]]
            charge = hold.amount if args["amount"] is None else args["amount"]
            assert (outcome.pending_id, outcome.amount) == (args["hold"], charge)
            self.release(args["hold"], "posted", transfer_id, charge)
        else:
            assert (outcome.pending_id, outcome.amount) == (args["hold"], 0)
            self.release(args["hold"], "voided", transfer_id, 0)
        self.calls.append(Call(op, transfer_id, args, outcome))

    def fresh(self, op: str, args: dict[str, Any], crash: tuple[str, int] | None = None) -> None:
        """A call with a new id; with `crash`, the fault hook breaks it at that point."""
        transfer_id = self.new_id(op)
        self.armed, self.hits = crash, 0
        try:
            outcome = self.run(self.invoke(op, transfer_id, args))
        except Crash:
            # Rolled back: the model stays as it is (checked after this step); retry later.
            self.crashed.append((op, transfer_id, args))
            return
        finally:
            self.armed = None
        self.settle(op, transfer_id, args, outcome)

    def draw_args(self, data: st.DataObject, op: str) -> dict[str, Any]:
        if op in ("post", "void"):
            # Mostly a pending hold; sometimes any (HoldNotPending) or an unknown one.
            pending = sorted(h for h, m in self.holds.items() if m.state == "pending")
            choices = [st.sampled_from(sorted(self.holds)), st.just(self.prefix + "never-held")]
            if pending:
                choices += [st.sampled_from(pending)] * 4
            hold_id = data.draw(st.one_of(choices), label="hold")
            if hold_id not in self.holds:
                return {"hold": hold_id} if op == "void" else {"hold": hold_id, "amount": None}
            if op == "void":
                return {"hold": hold_id}
            held = self.holds[hold_id].amount
            amount = data.draw(
                st.one_of(st.none(), st.just(held), st.just(held + 1), st.integers(0, held)),
                label="post amount",
            )
            return {"hold": hold_id, "amount": amount}
        account = data.draw(st.sampled_from(sorted(self.accounts)), label="account")
        if op == "credit":
            return {
                "account": account,
                "amount": data.draw(st.integers(1, 5_000), label="amount"),
                "source": data.draw(st.sampled_from(["topups", "bonus"]), label="source"),
            }
        amount = data.draw(st.integers(1, 2_000), label="amount")
        if op == "debit":
            return {"account": account, "amount": amount}
        return {
            "account": account,
            "amount": amount,
            "expires_in": data.draw(EXPIRES_IN, label="expires_in"),
        }

    def variants(self, call: Call) -> list[tuple[str, dict[str, Any]]]:
        """The same id with other parameters, or for another operation."""
        args = call.args
        other_hold = [h for h in sorted(self.holds) if h != args.get("hold")][:1]
        found: list[tuple[str, dict[str, Any]]] = []
        if call.op == "credit":
            found.append(("credit", {**args, "amount": args["amount"] + 1}))
            other_source = "bonus" if args["source"] == "topups" else "topups"
            found.append(("credit", {**args, "source": other_source}))
            found.append(("debit", {"account": args["account"], "amount": args["amount"]}))
        elif call.op == "debit":
            found.append(("debit", {**args, "amount": args["amount"] + 1}))
            found.append(("credit", {**args, "source": "topups"}))
        elif call.op == "hold":
            found.append(("hold", {**args, "amount": args["amount"] + 1}))
            found.append(("hold", {**args, "expires_in": args["expires_in"] + 1}))
            found.extend(
                ("hold", {**args, "account": a})
                for a in sorted(self.accounts)
                if a != args["account"]
            )
        elif call.op == "post":
            found.append(("post", {**args, "amount": 0 if args["amount"] is None else None}))
            found.append(("void", {"hold": args["hold"]}))
            found.extend(("post", {**args, "hold": h}) for h in other_hold)
        else:
            found.append(("post", {"hold": args["hold"], "amount": None}))
            found.extend(("void", {"hold": h}) for h in other_hold)
        return found

    def add_user(self, data: st.DataObject) -> None:
        """A new user, usually topped up at once through the API (so holds can succeed)."""
        account = self.run(ensure_user(self.engine, next(_users)))
        assert account not in self.accounts
        self.accounts[account] = ModelAccount()
        amount = data.draw(
            st.one_of(st.sampled_from([0, 1_000, 5_000]), st.integers(1, 10_000)),
            label="first top-up",
        )
        if amount:
            self.fresh("credit", {"account": account, "amount": amount, "source": "topups"})

    # ------------------------------------------------------------ rules

    @initialize(data=st.data())
    def two_users(self, data: st.DataObject) -> None:
        self.add_user(data)
        self.add_user(data)

    @precondition(lambda self: len(self.accounts) < 4)
    @rule(data=st.data())
    def new_user(self, data: st.DataObject) -> None:
        self.add_user(data)

    @rule(data=st.data())
    def credit(self, data: st.DataObject) -> None:
        self.fresh("credit", self.draw_args(data, "credit"))

    @rule(data=st.data())
    def debit(self, data: st.DataObject) -> None:
        self.fresh("debit", self.draw_args(data, "debit"))

    @rule(data=st.data())
    def hold(self, data: st.DataObject) -> None:
        self.fresh("hold", self.draw_args(data, "hold"))

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def post(self, data: st.DataObject) -> None:
        self.fresh("post", self.draw_args(data, "post"))

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        self.fresh("void", self.draw_args(data, "void"))

    @precondition(lambda self: self.calls)
    @rule(data=st.data(), cold=st.booleans())
    def repeat_same(self, data: st.DataObject, cold: bool) -> None:
        """I6/I9: the same id and parameters give the first outcome, refusals included,
        whatever happened since; `cold` asks a fresh Ledger (a restarted process)."""
        call = data.draw(st.sampled_from(self.calls), label="call")
        ledger = Ledger(self.engine, clock=self.clock) if cold else None
        outcome = self.run(self.invoke(call.op, call.id, call.args, ledger))
        if isinstance(call.outcome, TransferRecord):
            assert outcome == call.outcome
        else:
            assert isinstance(outcome, LedgerError), outcome
            assert (type(outcome), outcome.message) == (type(call.outcome), call.outcome.message)

    @precondition(lambda self: self.calls)
    @rule(data=st.data())
    def repeat_other(self, data: st.DataObject) -> None:
        """I6: the same id with other parameters is an error, never a silent success."""
        call = data.draw(st.sampled_from(self.calls), label="call")
        op, args = data.draw(st.sampled_from(self.variants(call)), label="variant")
        outcome = self.run(self.invoke(op, call.id, args))
        assert isinstance(outcome, IdempotencyConflict), (call, op, args, outcome)

    @rule(data=st.data(), point=st.sampled_from(FAULT_POINTS), nth=st.integers(1, 2))
    def crash(self, data: st.DataObject, point: str, nth: int) -> None:
        """A crash at the nth passage of a fault point; a call that never gets there
        completes normally."""
        op = data.draw(st.sampled_from([o for o in OPS if self.holds or o not in ("post", "void")]))
        self.fresh(op, self.draw_args(data, op), crash=(point, nth))

    @precondition(lambda self: self.crashed)
    @rule(data=st.data())
    def retry_crashed(self, data: st.DataObject) -> None:
        """I9: after a crash the same id runs as if it were the first call, now."""
        index = data.draw(st.integers(0, len(self.crashed) - 1), label="crashed call")
        op, transfer_id, args = self.crashed.pop(index)
        self.settle(op, transfer_id, args, self.run(self.invoke(op, transfer_id, args)))

    @rule(seconds=CLOCK_JUMPS)
    def clock_jump(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(crash=st.one_of(st.none(), st.sampled_from(FAULT_POINTS[:2])))
    def sweep(self, crash: str | None) -> None:
        """expire_due; a crash breaks its first hold's transaction, so nothing changes."""
        self.armed, self.hits = (crash, 1) if crash else None, 0
        try:
            expired = self.run(self.ledger.expire_due(limit=SWEEP_LIMIT))
        except Crash:
            return
        finally:
            self.armed = None
        due = {
            h
            for h, m in self.holds.items()
            if m.state == "pending" and m.timeout_at <= self.clock.now
        }
        assert set(expired) & set(self.holds) == due
        assert len(expired) == len(set(expired))
        for hold_id in due:
            self.release(hold_id, "expired", "x:" + hold_id, 0)
        # I8: nothing pending is past its timeout once the sweeper has run.
        self.run(self._assert_none_overdue())

    async def _assert_none_overdue(self) -> None:
        async with self.engine.connect() as conn:
            overdue = await conn.scalar(
                select(func.count())
                .select_from(_holds)
                .where(_holds.c.state == "pending", _holds.c.timeout_at <= self.clock.now)
            )
        assert overdue == 0

    # ------------------------------------------------------------ checks

    @invariant()
    def database_matches_model(self) -> None:
        self.run(self._check())

    async def _check(self) -> None:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(select(_accounts).where(_accounts.c.id.in_(list(self.accounts))))
            ).all()
            holds = (
                await conn.execute(select(_holds).where(_holds.c.id.in_(list(self.holds))))
            ).all()
            keys = await conn.scalar(
                select(func.count()).select_from(_keys).where(_keys.c.key.like(self.prefix + "%"))
            )
        balances = {
            r.id: (r.credits_posted - r.debits_posted, r.debits_pending - r.credits_pending)
            for r in rows
        }
        assert balances == {a: (m.posted, m.pending) for a, m in self.accounts.items()}
        stored = {
            r.id: ModelHold(
                r.account_id, r.amount, utc(r.timeout_at), r.state, r.posted_amount, r.resolution_id
            )
            for r in holds
        }
        assert stored == self.holds
        # Every completed call left exactly one key; a crashed one left none.
        assert keys == len(self.calls)

    def teardown(self) -> None:
        self.run(check_invariants(self.engine))


def test_s16_ledger_state_machine(migrated_database_url: str) -> None:
    loop = asyncio.new_event_loop()
    engine = create_engine(DatabaseSettings(database_url=migrated_database_url))
    machine = type("LedgerMachineOnDb", (LedgerMachine,), {"loop": loop, "engine": engine})
    try:
        run_state_machine_as_test(machine, settings=SETTINGS)
    finally:
        loop.run_until_complete(engine.dispose())
        loop.close()
