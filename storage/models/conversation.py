"""Where each conversation is, and which Telegram updates were handled already."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, String
from sqlmodel import Field, SQLModel

from storage.models.base import utc_column


class ConversationState(SQLModel, table=True):
    """One row per conversation; `counter` is the compare-and-set guard.

    BigInteger because the counter only ever grows, for the life of a chat.
    `updated_at` is written in UTC; SQLite keeps it without the offset.
    """

    __tablename__ = "conversation_state"

    key: str = Field(sa_column=Column(String(64), primary_key=True))
    state: str = Field(sa_column=Column(String(64), nullable=False))
    counter: int = Field(sa_column=Column(BigInteger, nullable=False))
    locale: str = Field(sa_column=Column(String(8), nullable=False))
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class ProcessedUpdate(SQLModel, table=True):
    """Telegram update ids already handled, so a redelivery has no second effect."""

    __tablename__ = "processed_updates"

    update_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    processed_at: datetime = utc_column()
