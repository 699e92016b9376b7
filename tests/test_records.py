"""The frozen records the stores return are projections of their tables: each field is a
column of the table, nullable exactly when the field may be None. A column renamed or
made nullable in storage/models without its record fails here, not in production."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from sqlmodel import SQLModel

from storage.jobs import JobRecord
from storage.ledger_values import HoldRecord, TransferRecord
from storage.models import Hold, Job, Order, Payment, Transfer, table_of
from storage.payments import OrderRecord, PaymentRecord

RECORDS: list[tuple[type[object], type[SQLModel]]] = [
    (JobRecord, Job),
    (OrderRecord, Order),
    (PaymentRecord, Payment),
    (TransferRecord, Transfer),
    (HoldRecord, Hold),
]


@pytest.mark.parametrize(("record", "model"), RECORDS, ids=lambda x: getattr(x, "__name__", ""))
def test_a_record_is_a_projection_of_its_table(record: type[object], model: type[SQLModel]) -> None:
    columns = table_of(model).columns
    hints = typing.get_type_hints(record)
    fields = [f.name for f in dataclasses.fields(record)]  # type: ignore[arg-type]
    assert set(fields) <= set(columns.keys()), set(fields) - set(columns.keys())
    optional = {name for name in fields if type(None) in typing.get_args(hints[name])}
    nullable = {name for name in fields if columns[name].nullable}
    assert optional == nullable
