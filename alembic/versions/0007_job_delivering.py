"""jobs: the `delivering` state, where one sender holds delivery under a lease

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

A succeeded job is claimed (succeeded -> delivering, lease in next_check_at) before
its result is sent, so two steps or two processes never both send it; a dead
sender's lease expires and another takes over (flows.generation.lifecycle).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = (
    "created", "held", "submitting", "submitted", "running", "succeeded",
    "delivered", "charged", "failed", "released", "rejected", "lost",
)  # fmt: skip
_AFTER = (*_BEFORE[:6], "delivering", *_BEFORE[6:])


def _state_check(states: tuple[str, ...]) -> str:
    return "state IN (" + ", ".join(f"'{s}'" for s in states) + ")"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_state"), type_="check")
        batch_op.create_check_constraint(op.f("ck_jobs_state"), _state_check(_AFTER))


def downgrade() -> None:
    # A delivery in flight goes back to `succeeded`, which sends it again (MONEY.md S6).
    op.execute("UPDATE jobs SET state = 'succeeded' WHERE state = 'delivering'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_state"), type_="check")
        batch_op.create_check_constraint(op.f("ck_jobs_state"), _state_check(_BEFORE))
