"""What users (and the admin) do in a run, the effect points along the way, and what
must hold afterwards.

Each journey has a set-up (`prepare`, no fault armed), the step the fault is aimed at
(`walk` calls `arm` right before it), a condition for "settled" (`done`: jobs final,
and so on) and its checks (`check`), read straight from the database and from what
the fakes recorded. Users behave as people do: a tap that only got "this menu is out
of date" is tapped again, once; a payment is made on the invoice Telegram showed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy import select

from engine.loader import load_flow
from engine.local.bot_api_server import QUERY_TOO_OLD, Call
from pricing.catalog import load_catalog
from storage.job_states import JOB_FINAL_STATES
from storage.ledger import Ledger
from storage.models import Job, table_of
from storage.payments import PaymentStore
from storage.users import find_account
from tests.faults.model import Finding, Point
from tests.faults.service import ADMIN_ID
from tests.faults.world import FAILURE, SUCCESS, User, World
from tests.harness import ROOT

FLOW = load_flow(ROOT / "flows.yaml").spec
CATALOG = load_catalog()
MEDIA = ("sendPhoto", "sendVideo", "sendAudio", "sendDocument")
_jobs = table_of(Job)
Arm = Callable[[User], Awaitable[None]]


def said(key: str) -> str:
    """The fixed start of a product text (Russian, as sent, HTML included)."""
    return FLOW.texts[key]["ru"].split("{")[0]


def shown(state: str) -> str:
    """The fixed start of a state's text (Russian, as sent)."""
    return FLOW.states[state].text["ru"].split("{")[0]


@dataclass
class Run:
    """One run: one fault at one point, with the users who walk through it."""

    world: World
    point: Point
    fault: str
    number: int
    users: list[User] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def prompt(self, user: User) -> str:
        return f"a red fox in the snow, run {self.number} user {user.id}"

    def fail(self, reason: str) -> None:
        self.findings.append(Finding("fail", reason))

    def note(self, reason: str) -> None:
        self.findings.append(Finding("note", reason))


class Journey:
    name: ClassVar[str]
    points: ClassVar[tuple[Point, ...]] = ()

    @property
    def label(self) -> str:
        return self.name

    async def prepare(self, run: Run, user: User) -> None:
        raise NotImplementedError

    async def walk(self, run: Run, user: User, arm: Arm) -> None:
        raise NotImplementedError

    async def done(self, run: Run, user: User) -> bool:
        return True

    async def check(self, run: Run, user: User) -> None:
        raise NotImplementedError


# ------------------------------------------------------------------ shared reading


async def available(world: World, user_id: int) -> int:
    async def read() -> int:
        account = await find_account(world.db.engine, user_id)
        if account is None:
            return 0
        return (await Ledger(world.db.engine).balance(account)).available

    return await world.retrying(read)


async def jobs_of(world: World, user: User) -> list[Any]:
    """The user's jobs, oldest first, without the ones the set-up seeded."""

    async def read() -> list[Any]:
        async with world.db.engine.connect() as conn:
            rows = await conn.execute(
                select(_jobs)
                .where(_jobs.c.user_id == user.id, _jobs.c.key.not_like("seed:%"))
                .order_by(_jobs.c.created_at, _jobs.c.id)
            )
            return list(rows.all())

    return await world.retrying(read)


def urls_of(job: Any) -> list[str]:
    raw = job.result_urls
    return list(json.loads(raw) if isinstance(raw, str) else raw or [])


def deliveries_of(user: User, urls: Sequence[str]) -> int:
    """Messages that brought one of `urls` to the chat: by URL, as an upload of that
    file, or as the link sent when Telegram takes neither."""
    names = [u.rsplit("/", 1)[-1] for u in urls]
    count = 0
    for call in user.calls():
        if call.failed:
            continue
        if call.method in MEDIA:
            blob = json.dumps(call.params) + " ".join(f.filename for f in call.files.values())
            if any(u in blob for u in urls) or any(n in blob for n in names):
                count += 1
        elif call.method == "sendMessage" and any(u in str(call.params.get("text")) for u in urls):
            count += 1
    return count


def answers(world: World, query_id: str) -> tuple[int, int]:
    """(successful answers, answers refused as "query is too old") of a callback query."""
    ok = too_old = 0
    for call in world.telegram.calls_of("answerCallbackQuery"):
        if str(call.params.get("callback_query_id")) != query_id:
            continue
        if not call.failed:
            ok += 1
        elif isinstance(call.result, dict) and call.result.get("description") == QUERY_TOO_OLD:
            too_old += 1
    return ok, too_old


def texts_to(world: World, chat_id: int, start: str) -> list[Call]:
    return [
        c
        for c in world.telegram.calls_of("sendMessage")
        if not c.failed
        and _int(c.params.get("chat_id")) == chat_id
        and str(c.params.get("text", "")).startswith(start)
    ]


def _int(raw: Any) -> int | None:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def dup(run: Run, what: str, result: bool = False) -> None:
    """A repeated effect. MONEY.md S6 allows a result twice after a crash; anything else
    repeated is reported all the same, apart from the failures."""
    crash = run.fault == "kill"
    if result:
        why = "S6 allows it after a crash" if crash else "without a crash: S6 does not cover it"
    else:
        why = "after a crash" if crash else "without a crash"
    run.findings.append(Finding("dup", f"{what} ({why})"))


async def tap_again_if_stale(user: User, tap: Callable[[], Awaitable[object]], source: str) -> None:
    """A tap whose screen stayed where it was (answered "out of date") is tapped again."""
    if await user.state() == source:
        user.retries += 1
        await tap()


# ------------------------------------------------------------------ generation


def _paid_text_model() -> str:
    return next(m.id for m in CATALOG.by_kind("text_to_image") if not m.free and not m.needs_image)


_GEN = "generation"
_CONFIRM_ANSWER = Point(
    "gen.answer",
    _GEN,
    "telegram",
    "answerCallbackQuery",
    "the Generate tap answered: hold placed, job and state saved",
)
_RESULT_SCREEN = Point(
    "gen.result_screen",
    _GEN,
    "telegram",
    "sendMessage",
    "the result screen pushed after delivery: before the charge",
    text=shown("job_result"),
)
_FAIL = "generation_fails"
_FAIL_CALLBACK = Point(
    "fail.callback", _FAIL, "kie", "callback", "KIE about to call back a failed task"
)


class Generation(Journey):
    """A paid text-to-image generation from the confirm screen to charged."""

    name = _GEN
    points: ClassVar[tuple[Point, ...]] = (
        Point("gen.hold", _GEN, "gate", "holds", "the Generate tap, before its hold commits"),
        _CONFIRM_ANSWER,
        Point("gen.screen", _GEN, "telegram", "screen", "the job_started screen edit", markup=True),
        Point("gen.create", _GEN, "kie", "createTask", "KIE received createTask"),
        Point(
            "gen.progress",
            _GEN,
            "telegram",
            "sendMessage",
            "the progress message",
            text="⏳",
            markup=False,
        ),
        Point("gen.callback", _GEN, "kie", "callback", "KIE about to call back the result"),
        Point("gen.confirm", _GEN, "kie", "recordInfo", "the service confirms a finished task"),
        Point("gen.delivery", _GEN, "telegram", "media", "the result sent to the user"),
        _RESULT_SCREEN,
        Point(
            "gen.charge",
            _GEN,
            "gate",
            "transfers",
            "after delivery, before the charge (post) commits",
            gate_after=_RESULT_SCREEN,
        ),
    )
    behaviour = SUCCESS
    expect = "charged"
    funds = 1000_00

    async def prepare(self, run: Run, user: User) -> None:
        world = run.world
        await world.fund(user, self.funds, f"fund:{run.number}:{user.id}")
        world.kie.behave(run.prompt(user), self.behaviour)
        await user.send("/start")
        await user.tap("t2i")
        await user.tap_option(_paid_text_model())
        await user.tap("start")
        await user.send(run.prompt(user))
        if await user.state() != "confirm":
            raise RuntimeError(f"set-up did not reach the confirm screen: {await user.state()}")

    async def walk(self, run: Run, user: User, arm: Arm) -> None:
        await arm(user)
        await user.tap("go")
        await tap_again_if_stale(user, lambda: user.tap("go"), "confirm")

    async def done(self, run: Run, user: User) -> bool:
        jobs = await jobs_of(run.world, user)
        return bool(jobs) and all(j.state in JOB_FINAL_STATES for j in jobs)

    async def check(self, run: Run, user: User) -> None:
        world = run.world
        jobs = await jobs_of(world, user)
        if not jobs:
            run.fail("no job for the confirmed order")
            return
        if len(jobs) > 1:
            charged = sum(1 for j in jobs if j.state == "charged")
            why = " (the user tapped Generate again after a stale answer)" if user.retries else ""
            run.fail(f"{len(jobs)} jobs, {charged} charged, for one order{why}")
        spent = 0
        for job in jobs:
            spent += await self._check_job(run, user, job)
        balance = await available(world, user.id)
        if balance != self.funds - spent:
            run.fail(f"balance {balance} != funded {self.funds} - charged {spent}")

    async def _check_job(self, run: Run, user: User, job: Any) -> int:
        """Checks one job; returns what it charged."""
        world = run.world
        sent = deliveries_of(user, urls_of(job)) if urls_of(job) else 0
        posts = await world.value(
            "SELECT COUNT(*) FROM transfers WHERE pending_id = :h AND kind = 'post'", h=job.hold_id
        )
        hold = await world.value("SELECT state FROM holds WHERE id = :h", h=job.hold_id)
        if job.state not in JOB_FINAL_STATES:
            run.fail(f"job {job.id} still {job.state} after the run settled")
            return 0
        if job.state == "charged":
            if self.expect != "charged":
                run.fail(f"job {job.id} charged although KIE failed the task")
            if posts != 1 or hold != "posted":
                run.fail(f"job {job.id} charged with {posts} posts, hold {hold}")
            if sent == 0:
                run.fail(f"job {job.id} charged, but its result never reached the user")
            elif sent > 1:
                dup(run, f"result of job {job.id} delivered {sent} times", result=True)
            return int(job.price)
        if job.state == "released":
            if self.expect == "charged":
                task = world.kie.tasks.get(job.task_id or "") or next(
                    iter(world.kie.tasks_for(prompt=run.prompt(user))), None
                )
                if task is not None and task.done:
                    run.fail(
                        f"job {job.id} released ({job.error}) though KIE made the result: "
                        "the order was not served"
                    )
                elif job.error == "timeout" and task is None:
                    # MONEY.md S4: a crash before KIE had the task; released, never charged.
                    run.note(f"job {job.id} released: KIE never got its task (S4)")
                else:
                    run.fail(f"job {job.id} released ({job.error}): the order was not served")
            if posts or hold == "pending":
                run.fail(f"job {job.id} released with {posts} posts, hold {hold}")
            if sent:
                run.fail(f"job {job.id} released, yet its result was delivered ({sent}x)")
            return 0
        run.fail(f"job {job.id} ended {job.state} ({job.error})")
        return 0


class FailedGeneration(Generation):
    """KIE fails the task: the hold must be released, nothing charged."""

    name = _FAIL
    points: ClassVar[tuple[Point, ...]] = (
        _FAIL_CALLBACK,
        Point(
            "fail.release_screen",
            _FAIL,
            "telegram",
            "sendMessage",
            "the failure screen pushed after the release",
            text=shown("job_failed"),
        ),
        Point(
            "fail.void",
            _FAIL,
            "gate",
            "transfers",
            "the release (void) of the hold, before it commits",
            gate_after=_FAIL_CALLBACK,
        ),
    )
    behaviour = FAILURE
    expect = "released"


# ------------------------------------------------------------------ payments


_PAY = "payment"


async def open_topup(user: User) -> None:
    await user.send("/start")
    await user.tap("balance")
    await user.tap("topup")


async def pay(run: Run, user: User, charge: str) -> tuple[dict[str, Any] | None, int]:
    """Package -> invoice -> pre-checkout -> successful_payment, as Telegram and the user
    would do them; (the invoice, the kopecks the order credits)."""
    world = run.world
    before = len(world.telegram.calls)

    def invoices() -> list[Call]:
        return [
            c
            for c in world.telegram.calls[before:]
            if c.method == "sendInvoice"
            and not c.failed
            and _int(c.params.get("chat_id")) == user.id
        ]

    await user.tap_option()
    if not invoices():
        await tap_again_if_stale(user, user.tap_option, "topup")
    if not invoices():
        run.fail("the package tap never brought an invoice")
        return None, 0
    params = invoices()[0].params
    amount = sum(int(p["amount"]) for p in params["prices"])
    for _ in range(2):  # a payment whose check got no answer fails; the user pays again
        update = world.telegram.make_pre_checkout_update(
            user.id, params["payload"], params["currency"], amount
        )
        query_id = update["pre_checkout_query"]["id"]
        user.pre_checkouts.add(query_id)
        await user.deliver(update)
        answered = [
            c
            for c in world.telegram.calls_of("answerPreCheckoutQuery")
            if not c.failed and c.params.get("pre_checkout_query_id") == query_id
        ]
        if answered and answered[0].params.get("ok") is True:
            break
        user.retries += 1
    else:
        run.fail("the pre-checkout query was never answered ok")
        return params, 0
    paid = world.telegram.make_successful_payment_update(
        user.id, user.id, params["payload"], params["currency"], amount, charge_id=charge
    )
    await user.deliver(paid)
    credit = await world.value("SELECT credit FROM orders WHERE id = :o", o=str(params["payload"]))
    return params, int(credit or 0)


class Payment(Journey):
    """A Stars top-up: invoice, pre-checkout, successful_payment, credit and receipt."""

    name = _PAY
    points: ClassVar[tuple[Point, ...]] = (
        Point("pay.invoice", _PAY, "telegram", "sendInvoice", "the invoice sent"),
        Point(
            "pay.pre_checkout",
            _PAY,
            "telegram",
            "answerPreCheckoutQuery",
            "the pre-checkout query answered",
            chat="pre_checkout",
        ),
        Point("pay.record", _PAY, "gate", "payments", "successful_payment, before it is recorded"),
        Point(
            "pay.credit",
            _PAY,
            "gate",
            "transfers",
            "successful_payment recorded, before the credit commits",
        ),
        Point("pay.receipt", _PAY, "telegram", "sendMessage", "the receipt", text=said("receipt")),
        Point(
            "pay.balance_screen",
            _PAY,
            "telegram",
            "sendMessage",
            "the balance screen pushed after the receipt",
            text=shown("balance"),
            markup=True,
        ),
    )

    def __init__(self) -> None:
        self.charges: dict[int, str] = {}
        self.credits: dict[int, int] = {}

    async def prepare(self, run: Run, user: User) -> None:
        await open_topup(user)

    async def walk(self, run: Run, user: User, arm: Arm) -> None:
        charge = f"stxcharge-{run.number}-{user.id}"
        self.charges[user.id] = charge
        await arm(user)
        _, self.credits[user.id] = await pay(run, user, charge)

    async def check(self, run: Run, user: User) -> None:
        world = run.world
        charge = self.charges[user.id]
        credit = self.credits.get(user.id, 0)
        if not credit:
            return  # no payment was made: what failed before it is reported already
        recorded = await world.value("SELECT COUNT(*) FROM payments WHERE charge_id = :c", c=charge)
        if recorded != 1:
            run.fail(f"successful_payment {charge} acknowledged, {recorded} payments rows")
        credits = await world.rows(
            "SELECT t.amount FROM transfers t JOIN accounts a ON a.id = t.credit_account_id "
            "WHERE a.user_id = :u AND t.reason = 'topup'",
            u=user.id,
        )
        if [r[0] for r in credits] != [credit]:
            run.fail(f"payment credited {[r[0] for r in credits]}, expected [{credit}] once")
        balance = await available(world, user.id)
        if balance != credit:
            run.fail(f"balance {balance} after a top-up of {credit}")
        receipts = len(texts_to(world, user.id, said("receipt")))
        if receipts == 0:
            run.fail("credited, but the receipt never reached the user")
        elif receipts > 1:
            dup(run, f"receipt sent {receipts} times")


# ------------------------------------------------------------------ promo codes


_PROMO = "promo"
PROMO_AMOUNT = 30_00


class Promo(Journey):
    """A promo code typed on the promo screen: claim and credit in one transaction."""

    name = _PROMO
    points: ClassVar[tuple[Point, ...]] = (
        Point(
            "promo.claim",
            _PROMO,
            "gate",
            "promo_redemptions",
            "the code typed, before claim and credit commit",
        ),
        Point(
            "promo.notice",
            _PROMO,
            "telegram",
            "sendMessage",
            "the 'accepted' notice",
            text=said("promo_ok"),
        ),
        Point(
            "promo.screen",
            _PROMO,
            "telegram",
            "screen",
            "the balance screen after the notice",
            markup=True,
        ),
    )

    def code(self, run: Run) -> str:
        return f"FAULT{run.number}"

    async def prepare(self, run: Run, user: User) -> None:
        if user is run.users[0]:
            await PaymentStore(run.world.db.engine).create_promo(
                code=self.code(run), amount=PROMO_AMOUNT, max_uses=1000, created_by=ADMIN_ID
            )
        await user.send("/start")
        await user.tap("balance")
        await user.tap("promo")

    async def walk(self, run: Run, user: User, arm: Arm) -> None:
        await arm(user)
        await user.send(self.code(run))
        notices = [said(k) for k in ("promo_ok", "promo_used", "promo_unknown", "promo_exhausted")]
        told = [t for t in user.sent_texts() if any(t.startswith(n) for n in notices)]
        if not told and await user.state() == "promo":
            user.retries += 1
            await user.send(self.code(run))

    async def check(self, run: Run, user: User) -> None:
        world = run.world
        code = self.code(run)
        claims = await world.value(
            "SELECT COUNT(*) FROM promo_redemptions WHERE code = :c AND user_id = :u",
            c=code,
            u=user.id,
        )
        credits = await world.rows(
            "SELECT t.amount FROM transfers t JOIN accounts a ON a.id = t.credit_account_id "
            "WHERE a.user_id = :u AND t.reason = 'promo'",
            u=user.id,
        )
        if claims != 1 or [r[0] for r in credits] != [PROMO_AMOUNT]:
            run.fail(f"promo: {claims} claims, credits {[r[0] for r in credits]} (expected once)")
        used = await world.value("SELECT used FROM promo_codes WHERE code = :c", c=code)
        total = await world.value("SELECT COUNT(*) FROM promo_redemptions WHERE code = :c", c=code)
        if used != total:
            run.fail(f"promo {code}: used {used} but {total} redemptions")
        if await available(world, user.id) != PROMO_AMOUNT * claims:
            run.fail(f"balance {await available(world, user.id)} after the promo code")
        ok = len(texts_to(world, user.id, said("promo_ok")))
        if claims == 1 and ok == 0:
            told = [t[:40] for t in user.sent_texts()[-3:]]
            run.fail(f"promo credited, but the user was never told it was accepted: {told}")
        elif ok > 1:
            dup(run, f"'promo accepted' told {ok} times")


# ------------------------------------------------------------------ admin


_ADMIN = "admin_credit"
_REFUND = "admin_refund"
ADMIN_CREDIT = 25_00


class AdminCredit(Journey):
    """/credit: the transfer and its audit row in one transaction, then the reply."""

    name = _ADMIN
    points: ClassVar[tuple[Point, ...]] = (
        Point(
            "admin.transfer",
            _ADMIN,
            "gate",
            "transfers",
            "/credit, before the transfer and its audit row commit",
        ),
        Point(
            "admin.reply",
            _ADMIN,
            "telegram",
            "sendMessage",
            "the reply to the admin",
            chat="admin",
            text=said("admin_adjusted"),
        ),
    )

    def __init__(self) -> None:
        self.keys: dict[int, tuple[str, bool]] = {}

    async def prepare(self, run: Run, user: User) -> None:
        await user.send("/start")

    async def walk(self, run: Run, user: User, arm: Arm) -> None:
        admin = User(run.world, ADMIN_ID, "ru")
        update = run.world.telegram.make_message_update(
            ADMIN_ID, ADMIN_ID, f"/credit {user.id} 25 fault run {run.number}"
        )
        key = f"adm:{ADMIN_ID}:{update['message']['message_id']}"
        await arm(user)
        delivery = await admin.deliver(update)
        user.deliveries.append(delivery)
        self.keys[user.id] = (key, delivery.acked)

    async def check(self, run: Run, user: User) -> None:
        world = run.world
        key, acked = self.keys[user.id]
        audits = await world.value("SELECT COUNT(*) FROM admin_audit WHERE effect_key = :k", k=key)
        if acked and audits != 1:
            run.fail(f"admin command acknowledged with {audits} audit rows")
        transfers = await world.value("SELECT COUNT(*) FROM transfers WHERE id = :k", k=key)
        balance = await available(world, user.id)
        if transfers != 1 or balance != ADMIN_CREDIT:
            run.fail(f"/credit applied {transfers} times, balance {balance}")
        replies = [
            c
            for c in texts_to(world, ADMIN_ID, said("admin_adjusted"))
            if f" {user.id}:" in str(c.params.get("text"))
        ]
        if not replies:
            run.fail("/credit applied, but the admin never got the reply")
        elif len(replies) > 1:
            dup(run, f"admin reply sent {len(replies)} times")


class AdminRefund(Journey):
    """/refund of a Stars payment: hold, mark, refundStarPayment, post."""

    name = _REFUND
    points: ClassVar[tuple[Point, ...]] = (
        Point("refund.hold", _REFUND, "gate", "holds", "/refund, before its hold commits"),
        Point("refund.call", _REFUND, "telegram", "refundStarPayment", "the Stars refund call"),
        Point(
            "refund.reply",
            _REFUND,
            "telegram",
            "sendMessage",
            "the reply to the admin",
            chat="admin",
            text=said("refund_done"),
        ),
    )

    def __init__(self) -> None:
        self.charges: dict[int, tuple[str, int]] = {}
        self.keys: dict[int, tuple[str, bool]] = {}

    async def prepare(self, run: Run, user: User) -> None:
        await open_topup(user)
        charge = f"stxrefund-{run.number}-{user.id}"
        _, credit = await pay(run, user, charge)
        self.charges[user.id] = (charge, credit)

    async def walk(self, run: Run, user: User, arm: Arm) -> None:
        charge, _ = self.charges[user.id]
        admin = User(run.world, ADMIN_ID, "ru")
        await arm(user)
        update = run.world.telegram.make_message_update(ADMIN_ID, ADMIN_ID, f"/refund {charge}")
        delivery = await admin.deliver(update)
        user.deliveries.append(delivery)
        key = f"adm:{ADMIN_ID}:{update['message']['message_id']}"
        self.keys[user.id] = (key, delivery.acked)

    async def check(self, run: Run, user: User) -> None:
        world = run.world
        charge, credit = self.charges[user.id]
        refunded = charge in world.telegram.refunded
        marked = await world.value(
            "SELECT refunded_at FROM payments WHERE charge_id = :c", c=charge
        )
        balance = await available(world, user.id)
        if refunded and (balance != 0 or marked is None):
            run.fail(
                f"Telegram refunded the Stars, but the balance is {balance} of {credit} "
                f"and the payment is {'marked' if marked else 'not marked'} refunded"
            )
        if not refunded and (balance != credit or marked is not None):
            run.fail(f"no refund at Telegram, yet the balance is {balance} of {credit}")
        key, acked = self.keys[user.id]
        audits = await world.value("SELECT COUNT(*) FROM admin_audit WHERE effect_key = :k", k=key)
        if acked and audits != 1:
            run.fail(f"/refund acknowledged with {audits} audit rows")


# ------------------------------------------------------------------ every journey

JOURNEYS: dict[str, type[Journey]] = {
    j.name: j for j in (Generation, FailedGeneration, Payment, Promo, AdminCredit, AdminRefund)
}


def common_checks(run: Run) -> None:
    """What every run must show: each update acknowledged in the end, and each callback
    query answered: exactly one answer taken by Telegram, and a repeat (which Telegram
    refuses, "query is too old", unseen by the user) only from a redelivery, never
    within one delivery. A delivery cut off between its answer and its acknowledgement
    (kill -9, or an outage that kept the engine from noting the answer) cannot know
    Telegram took the answer: such repeats are reported as duplicates."""
    for user in run.users:
        for delivery in user.deliveries:
            if not delivery.acked:
                run.fail(
                    f"update {delivery.update_id} never acknowledged "
                    f"({len(delivery.attempts)} attempts, last {delivery.attempts[-1]})"
                )
        for query_id, delivery in user.taps.items():
            ok, too_old = answers(run.world, query_id)
            if ok != 1:
                run.fail(f"callback query {query_id} answered {ok} times")
            if too_old > delivery.redelivered:
                run.fail(
                    f"callback query {query_id} answered twice within one delivery "
                    f"({too_old} refused repeats, {len(delivery.attempts)} deliveries)"
                )
            elif too_old:
                dup(run, f"callback query {query_id} answered again by a redelivery")
        if user.retries:
            run.note(f"user {user.id} repeated a step {user.retries}x")
