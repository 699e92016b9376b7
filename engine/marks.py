"""What the engine keeps about a conversation besides the product's data.

It lives in the snapshot's data under one reserved key, so it is written by the
same compare-and-set as the move it belongs to (no second table, no second round
trip) and every process sharing the database sees it. Store names in flows.yaml
start with a letter, so the key cannot collide with the product's data; the
engine strips it before an action or a provider sees the data.

- `shown`: which screen (a digest) the engine last put into which of the
  conversation's messages, so that a double or stale tap does not edit a message
  to what it shows already (Telegram refuses: "message is not modified"). An
  entry written together with a move, before its edit was made, names the update
  that wrote it: that update's own redelivery must not trust it, since the edit
  may never have happened.
- `by` and `notice`: the update that made the current screen, and the notice its
  outcome gave, so that its redelivery is answered as the first delivery was and
  not called out of date.
- `run`: the action claimed but not finished; the same update, delivered again,
  finishes it under the same run key.
- `answered`: callback queries answered, and messages whose notice was sent, by a
  delivery that was then refused (an outage after the answer), so that their
  redelivery does not answer again (Telegram would refuse a second answer: "query is
  too old"; a notice would show twice). Best effort: a delivery killed between its
  answer and this note answers again.

Everything here is advisory except `run`: losing a `shown` entry to a concurrent
writer costs one edit that Telegram may refuse, which the engine tolerates.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from aiogram.types import InlineKeyboardMarkup

from engine.store import Snapshot

KEY = "_engine"
# Messages remembered per conversation: the current screen and the few old ones a
# user may still tap; older ones are edited, at worst one refused edit each.
SHOWN_KEPT = 6
# Callback queries remembered as answered: redeliveries come within minutes, and a
# conversation has few updates in flight at once.
ANSWERED_KEPT = 8


def digest(text: str, markup: InlineKeyboardMarkup | None) -> str:
    """Text and keyboard together: Telegram refuses an edit only when both are equal."""
    h = hashlib.blake2b(text.encode(), digest_size=8)
    h.update(b"\0")
    if markup is not None:
        h.update(markup.model_dump_json(exclude_none=True).encode())
    return h.hexdigest()


def product_data(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != KEY}


@dataclass(frozen=True, slots=True)
class PendingRun:
    """An action claimed by `by` (the callback query or message that caused it), with
    everything needed to run it again without the screen it was tapped on."""

    by: str
    action: str
    args: dict[str, Any]
    changes: dict[str, Any]
    allowed: tuple[str, ...]

    def dump(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "action": self.action,
            "args": self.args,
            "set": self.changes,
            "to": list(self.allowed),
        }

    @classmethod
    def load(cls, raw: object) -> PendingRun | None:
        if not isinstance(raw, dict):
            return None
        by, action, args, changes, allowed = (
            raw.get(k) for k in ("by", "action", "args", "set", "to")
        )
        if not (
            isinstance(by, str)
            and isinstance(action, str)
            and isinstance(args, dict)
            and isinstance(changes, dict)
            and isinstance(allowed, list)
            and allowed
            and all(isinstance(s, str) for s in allowed)
        ):
            return None
        return cls(by, action, args, changes, tuple(allowed))


Shown = tuple[int, str, str]  # message id, digest, the update that wrote it before editing


@dataclass(frozen=True, slots=True)
class Marks:
    shown: tuple[Shown, ...] = ()
    by: str | None = None
    notice: tuple[str, bool] | None = None
    run: PendingRun | None = None
    answered: tuple[str, ...] = ()

    @classmethod
    def of(cls, snap: Snapshot) -> Marks:
        """Malformed or missing marks read as none: they only ever save work."""
        raw = snap.data.get(KEY)
        if not isinstance(raw, dict):
            return cls()
        shown = tuple(
            (e[0], e[1], e[2])
            for e in raw.get("shown") or ()
            if isinstance(e, list)
            and len(e) == 3
            and isinstance(e[0], int)
            and isinstance(e[1], str)
            and isinstance(e[2], str)
        )
        by = raw.get("by")
        notice = raw.get("notice")
        parsed_notice = (
            (notice[0], bool(notice[1]))
            if isinstance(notice, list) and len(notice) == 2 and isinstance(notice[0], str)
            else None
        )
        return cls(
            shown=shown,
            by=by if isinstance(by, str) else None,
            notice=parsed_notice,
            run=PendingRun.load(raw.get("run")),
            answered=tuple(a for a in raw.get("answered") or () if isinstance(a, str)),
        )

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.shown:
            out["shown"] = [list(e) for e in self.shown]
        if self.by is not None:
            out["by"] = self.by
        if self.notice is not None:
            out["notice"] = list(self.notice)
        if self.run is not None:
            out["run"] = self.run.dump()
        if self.answered:
            out["answered"] = list(self.answered)
        return out

    def apply(self, data: dict[str, Any]) -> dict[str, Any]:
        """The product's `data` with these marks, ready to be a snapshot's data."""
        plain = product_data(data)
        dumped = self.dump()
        return {**plain, KEY: dumped} if dumped else plain

    def moved(self, by: str | None = None, notice: tuple[str, bool] | None = None) -> Marks:
        """For the next screen: the messages still show what they show; the rest is
        about the screen being left."""
        return Marks(shown=self.shown, by=by, notice=notice, answered=self.answered)

    def claimed(self, run: PendingRun) -> Marks:
        return Marks(shown=self.shown, run=run, answered=self.answered)

    def answering(self, source: str) -> Marks:
        kept = [a for a in self.answered if a != source]
        kept.append(source)
        return replace(self, answered=tuple(kept[-ANSWERED_KEPT:]))

    def showing(self, message_id: int, screen: str, by: str = "") -> Marks:
        kept = [e for e in self.shown if e[0] != message_id]
        kept.append((message_id, screen, by))
        return replace(self, shown=tuple(kept[-SHOWN_KEPT:]))

    def forgetting(self, message_id: int) -> Marks:
        return replace(self, shown=tuple(e for e in self.shown if e[0] != message_id))

    def entry(self, message_id: int) -> Shown | None:
        return next((e for e in self.shown if e[0] == message_id), None)

    def shows(self, message_id: int, screen: str, source: str | None) -> bool:
        """Whether the message is known to show `screen` already. An entry written by
        `source` itself before its edit is not proof: this may be its redelivery."""
        found = self.entry(message_id)
        return found is not None and found[1] == screen and found[2] != source
