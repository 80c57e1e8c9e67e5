"""The people/data API's `world` on SQLite for the PACS tests that go through the API (see
tests/hardening/api_world.py); its gateway reaches the session's real Orthanc (tests/fixtures/pacs.py)."""

from tests.hardening.api_world import people_db, world  # noqa: F401  (fixtures)
