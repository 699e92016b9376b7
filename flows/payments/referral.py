"""Referral codes and links: a user id in base 36 after `ref_`, readable in a /start link.

Apart from the middleware that pays the bonus (flows.payments.growth), so that the
referral screen needs nothing of aiogram."""

from __future__ import annotations

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
REF_PREFIX = "ref_"


def referral_code(user_id: int) -> str:
    n, out = user_id, ""
    while True:
        n, digit = divmod(n, 36)
        out = _DIGITS[digit] + out
        if n == 0:
            return out


def parse_referral(start_arg: str) -> int | None:
    if not start_arg.startswith(REF_PREFIX):
        return None
    try:
        return int(start_arg.removeprefix(REF_PREFIX), 36)
    except ValueError:
        return None


def referral_link(bot_username: str, user_id: int) -> str:
    return f"https://t.me/{bot_username}?start={REF_PREFIX}{referral_code(user_id)}"
