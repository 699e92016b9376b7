"""The fault campaign (issue 11): faults injected at every effect point of the product,
through a real `trt serve`, with the money invariants checked after every run.

Why a campaign and not more unit tests: the guarantees in docs/MONEY.md (one hold per
order, one charge, one credit per payment, nothing lost) rest on how the whole system
behaves when a process dies or a dependency fails at an unlucky moment, and on
Telegram and KIE doing what they really do afterwards (redelivering updates, calling
back, being polled). So the campaign runs the real process, kills it with SIGKILL,
breaks its database and its Bot API and KIE calls, plays Telegram's redelivery, and
then reads the outcome from the database and from what the fakes recorded.

    python -m tests.faults --db both          # the full campaign (make faults)
    python -m tests.faults --db sqlite --quick

Modules: `fakes` (Telegram and KIE that can be struck at one call), `service` (the
supervised process), `courier` (Telegram's webhook delivery), `database` (fresh
databases and their faults), `world` (all of it, and the simulated users), `journeys`
and `navigation` (what users do, the effect points, the checks), `campaign` (the runs,
the invariants, the table). tests/test_faults.py is the fast subset `make test` runs.
"""
