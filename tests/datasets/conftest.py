from tests.db.conftest import db_engine, db_session, db_url, sqlite_url  # noqa: F401  (same fresh database fixtures)
