"""Generation jobs and the history of their states."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
)
from sqlmodel import Field, SQLModel

from storage.job_states import JobState
from storage.models.base import serial_id, utc_column

# Plain strings: the CHECK constraint's text, as the migrations wrote it.
JOB_STATES = tuple(state.value for state in JobState)


class Job(SQLModel, table=True):
    """One generation, from the confirm tap to charged or released.

    `key` is the idempotency key taken from the confirm screen, so a double tap
    or a redelivered update finds the same job (S1, S2); `task_id` is unique so
    one KIE task can never be charged for two jobs (I5).
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"state IN {JOB_STATES!r}", name="state"),
        CheckConstraint("price >= 0", name="price"),
        Index("ix_jobs_state_next_check_at", "state", "next_check_at"),
        Index("ix_jobs_user_id_created_at", "user_id", "created_at"),
    )

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    key: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    user_id: int = Field(sa_column=Column(BigInteger, ForeignKey("users.id"), nullable=False))
    chat_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    locale: str = Field(sa_column=Column(String(8), nullable=False))
    model_id: str = Field(sa_column=Column(String(32), nullable=False))
    kie_model: str = Field(sa_column=Column(String(128), nullable=False))
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    request: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    price: int = Field(sa_column=Column(BigInteger, nullable=False))
    hold_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    task_id: str | None = Field(
        default=None, sa_column=Column(String(128), nullable=True, unique=True)
    )
    callback_secret: str = Field(sa_column=Column(String(64), nullable=False))
    state: str = Field(sa_column=Column(String(12), nullable=False))
    result_urls: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(String(300), nullable=True))
    progress_message_id: int | None = Field(
        default=None, sa_column=Column(BigInteger, nullable=True)
    )
    polls: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    next_check_at: datetime = utc_column()
    deadline_at: datetime = utc_column()
    created_at: datetime = utc_column()
    updated_at: datetime = utc_column()


class JobEvent(SQLModel, table=True):
    """Each state a job entered, with its time: the job's history for support and tests."""

    __tablename__ = "job_events"

    id: int | None = serial_id()
    job_id: str = Field(
        sa_column=Column(String(32), ForeignKey("jobs.id"), nullable=False, index=True)
    )
    state: str = Field(sa_column=Column(String(12), nullable=False))
    detail: str | None = Field(default=None, sa_column=Column(String(300), nullable=True))
    at: datetime = utc_column()
