"""The product behind `flows.yaml`: not flows themselves (those are the YAML file), but
the Python that the file names and that the engine calls through its registry.

- `registry.py` builds the `engine.registry.Registry`: every action (`generate`,
  `buy_package`, `redeem_promo`...), every data and options provider, and the texts the
  product shows outside screens, each under the name flows.yaml uses.
- `catalog_menus.py`, `account_screens.py`, `generate_action.py`, `payments/screens.py`:
  those actions and providers, one screen family each.
- `generation/`, `payments/`, `admin.py`: the services they call (jobs from hold to
  delivery; Stars top-ups, refunds, promo codes, referrals; admin commands).

The engine never imports this package; this package reaches the engine only through
the registry and the `Pusher` protocol (showing a screen outside an update).
"""
