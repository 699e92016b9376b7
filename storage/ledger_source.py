"""Whether the database holds this code's ledger functions, told without generating them.

`storage.ledger_plpgsql` names each version of the functions by a digest of their
generated text; generating it imports the tables and the ledger's programs, a fifth
of a second that `trt migrate` on a database already at the head would spend only to
learn that nothing is to be done. The text is a function of the files in `SOURCES`
and of the SQLAlchemy and SQLModel releases that compile it, so `install` also
writes a key of those into each function's comment, with how many functions the
version has; when that many functions carry this code's key, the version is there.
Any other case (a changed file, another release, a function dropped by hand, a
database installed before keys were written) takes the full check in
`ledger_plpgsql.problem`. tests/test_migrations.py proves that `SOURCES` holds every
module of ours the generator imports.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import metadata
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_STORAGE = Path(__file__).resolve().parent
SOURCES = (
    "job_states.py",
    "ledger_plpgsql.py",
    "ledger_program.py",
    "ledger_source.py",
    "models/__init__.py",
    "models/base.py",
    "models/conversation.py",
    "models/jobs.py",
    "models/money.py",
    "models/payments.py",
)
RELEASES = ("sqlalchemy", "sqlmodel")
# In a function's comment, after ledger_plpgsql's "<digest> #<n>".
_KEYED = re.compile(r" source ([0-9a-f]+)/([0-9]+)$")

INSTALLED = text(
    "SELECT p.oid::regprocedure::text AS signature, p.proname AS name,"
    " obj_description(p.oid, 'pg_proc') AS note"
    " FROM pg_proc p WHERE p.proname LIKE 'ledger\\_%'"
    " AND p.pronamespace = current_schema()::regnamespace"
)


@cache
def source_key() -> str:
    """A digest of what the generated functions are made from."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (_STORAGE / name).read_bytes() + b"\0")
    for release in RELEASES:
        digest.update(f"{release}=={metadata.version(release)}\0".encode())
    return digest.hexdigest()[:16]


def keyed(count: int) -> str:
    """What `install` appends to each function's comment: this code's key and how many
    functions its version has."""
    return f" source {source_key()}/{count}"


async def installed_here(conn: AsyncConnection) -> bool:
    """True when every function of this code's version is installed (by its key); False
    means only that the full check must decide."""
    key = source_key()
    matching, expected = 0, None
    for row in await conn.execute(INSTALLED):
        found = _KEYED.search(row.note or "")
        if found and found.group(1) == key:
            matching += 1
            expected = int(found.group(2))
    return expected is not None and matching == expected
