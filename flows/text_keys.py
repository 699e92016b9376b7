"""Every text key of flows.yaml that the product's Python asks for by name, in one place.

flows.registry declares them all (Registry.uses_text), so `trt flows check`
proves each exists in every locale and fits where it is shown, and the
renderer raises on a key not declared (engine.render.MissingText) instead of
showing a user the key. Keys made from a value (`progress_<state>`,
`mv_<reason>`, `kind_<kind>`, `admin_usage_<command>`, `ledger_<code>`) are
spelled out here from the values they can take.

Kept free of aiogram and the database: the editors' `trt flows check` reads it.
"""

from __future__ import annotations

from typing import Literal, get_args

from flows.job_words import STATUS_TEXTS
from pricing.catalog import MENU_KIND_NAMES
from storage.job_states import JobState

# Why a pre-checkout query is refused.
PreCheckoutRefusal = Literal["pay_unknown_order", "pay_wrong_amount", "pay_expired", "pay_slow"]

# A refund's result, each the admin's reply.
RefundResult = Literal[
    "refund_done",
    "refund_again",
    "refund_unknown",
    "refund_spent",
    "refund_not_stars",
    "refund_failed",
]

# A promo code's refusal by what the ledger said.
PROMO_NOTICES = {"unknown": "promo_unknown", "used": "promo_used", "exhausted": "promo_exhausted"}

# The job states with a progress text (`progress_<state>`), and the two endings.
PROGRESS_STATES = (JobState.SUBMITTED, JobState.RUNNING)
PROGRESS_TEXTS = tuple(f"progress_{state}" for state in (*PROGRESS_STATES, "done", "failed"))

# The ledger's movement reasons the statement words (`mv_<reason>`); others show as is.
MOVEMENT_REASONS = ("topup", "generation", "refund", "welcome", "referral", "promo", "admin")

ADMIN_COMMANDS = ("stats", "user", "credit", "debit", "refund", "promo")
# The codes of the ledger's refusals that admin replies put in words (`ledger_<code>`).
LEDGER_WORDS = ("insufficient_funds",)

# Shown on a button's answer: plain text, at most 200 characters.
NOTICES = (
    "invoice_sent",
    "promo_ok",
    "param_saved",
    "free_limit",
    *PROMO_NOTICES.values(),
    *get_args(PreCheckoutRefusal),
)

# Each text with the longest value the product fills into each of its placeholders.
FILLED: dict[str, dict[str, int]] = {
    "result_link": {"url": 1500},
    "receipt": {"amount": 32},
    "charged_paid": {"price": 32},
    "invoice_description": {"package": 64},
    "admin_orphan_payment": {"user": 20, "amount": 32, "currency": 8, "charge": 200},
    **{key: {"model": 80, "seconds": 6} for key in PROGRESS_TEXTS},
    "admin_stats": {"users": 20, "payments": 20, "credited": 32, "jobs": 400},
    "admin_user": {"user": 20, "available": 32, "on_hold": 32, "jobs": 600},
    "admin_adjusted": {"user": 20, "available": 32},
    "admin_refused": {"reason": 300},
    "admin_unknown_user": {"user": 20},
    "admin_promo_made": {"code": 32},
    "admin_promo_exists": {"code": 32},
    **{
        f"admin_bad_{what}": {"value": 40} for what in ("user_id", "amount", "uses", "days", "code")
    },
}

# Captions under a sent result: at most 1024 characters.
CAPTIONS: dict[str, dict[str, int]] = {"result_caption": {"model": 80}}

# Texts without placeholders, shown in messages and screens.
PLAIN = (
    "charged_free",
    "invoice_title",
    "job_timeout",
    "job_failed_reason",
    "price_free",
    "no_params",
    "movements_empty",
    "history_empty",
    *STATUS_TEXTS,
    *(f"mv_{reason}" for reason in MOVEMENT_REASONS),
    *(f"kind_{kind}" for kind in MENU_KIND_NAMES),
    *get_args(RefundResult),
    *(f"admin_usage_{command}" for command in ADMIN_COMMANDS if command != "stats"),
    *(f"ledger_{code}" for code in LEDGER_WORDS),
)
