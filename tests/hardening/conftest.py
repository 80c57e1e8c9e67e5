"""The people/data API's `world` on SQLite for the hardening tests (see api_world.py)."""

from tests.hardening.api_world import people_db, world  # noqa: F401  (fixtures)
