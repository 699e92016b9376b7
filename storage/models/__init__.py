"""The tables, by domain, and the one metadata object migrations are checked against.

`base` holds the metadata and its naming convention, imported first; each
other module holds one domain's tables. Importing this package registers them
all (alembic/env.py and the migration tests need every table).
"""

from __future__ import annotations

from storage.models.base import NAMING_CONVENTION, metadata, serial_id, table_of, utc_column
from storage.models.conversation import ConversationState, ProcessedUpdate
from storage.models.jobs import JOB_STATES, Job, JobEvent
from storage.models.money import (
    HOLD_STATES,
    TRANSFER_KINDS,
    Account,
    AccountShard,
    Entry,
    Hold,
    IdempotencyKey,
    Transfer,
    User,
)
from storage.models.payments import (
    ORDER_STATES,
    AdminAudit,
    Order,
    Payment,
    PromoCode,
    PromoRedemption,
)

__all__ = [
    "HOLD_STATES",
    "JOB_STATES",
    "NAMING_CONVENTION",
    "ORDER_STATES",
    "TRANSFER_KINDS",
    "Account",
    "AccountShard",
    "AdminAudit",
    "ConversationState",
    "Entry",
    "Hold",
    "IdempotencyKey",
    "Job",
    "JobEvent",
    "Order",
    "Payment",
    "ProcessedUpdate",
    "PromoCode",
    "PromoRedemption",
    "Transfer",
    "User",
    "metadata",
    "serial_id",
    "table_of",
    "utc_column",
]
