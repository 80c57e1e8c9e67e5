"""One record of each kind people make (a person, an API key, a segmentation, an evaluation with a case, a
dataset, a model version with a feedback thread and a reply), written with plain SQL in the columns every
schema since 0004 has, so backup and upgrade tests can fill a database at head or at an older revision."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import inspect, text


def insert(conn, table: str, **values) -> None:
    names = ", ".join(values)
    conn.execute(text(f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + n for n in values)})"), values)


def insert_records(conn, url: str) -> dict[str, object]:
    """Write the records; return their ids by kind."""
    now = datetime.now(UTC)
    uid = (lambda u: u) if url.startswith("postgresql") else (lambda u: u.hex)
    seg, ev = uuid.uuid4(), uuid.uuid4()
    insert(conn, "users", email="a@example.org", password_hash="x", full_name="A", hospital="St. Anna",
           role="doctor", status="active", created_at=now)  # fmt: skip
    user = conn.execute(text("SELECT id FROM users WHERE email = 'a@example.org'")).scalar_one()
    insert(conn, "api_keys", name="ris", prefix="precords", hashed_secret="0" * 64, scopes='["evaluate"]',
           created_at=now, hospital="Bellevue")  # fmt: skip
    insert(conn, "segmentations", id=uid(seg), organ="liver", model_name="liver", model_version="1", width=4,
           height=4, probability_key=f"{seg}/probability.png", mask_keys=f'{{"0.5": "{seg}/mask-0.5.png"}}',
           areas_px='{"0.5": 3}', created_at=now, user_id=user, patient_id="P-1")  # fmt: skip
    insert(conn, "evaluations", id=uid(ev), organ="liver", model_name="liver", model_version="1",
           purpose="test", threshold=0.5, case_count=1, mean_dice=0.9, std_dice=0.0, mean_iou=0.8,
           per_threshold="[]", best_threshold=0.5, created_by="t", user_id=user, created_at=now)  # fmt: skip
    insert(conn, "evaluation_cases", evaluation_id=uid(ev), name="000", dice=0.9, iou=0.8,
           dice_at='{"0.5": 0.9}', width=4, height=4, predicted_px=3, label_px=3)  # fmt: skip
    insert(conn, "model_versions", organ="liver", model_name="liver", version="mrecords", state="candidate",
           card="{}", metrics="{}", created_by="t", created_at=now)  # fmt: skip
    version = conn.execute(text("SELECT id FROM model_versions WHERE version = 'mrecords'")).scalar_one()
    insert(conn, "feedback", model_version_id=version, author_user_id=user, body="P-1: part missing",
           status="open", created_at=now, updated_at=now)  # fmt: skip
    thread = conn.execute(text("SELECT id FROM feedback WHERE body = 'P-1: part missing'")).scalar_one()
    insert(conn, "feedback_replies", feedback_id=thread, body="looking", created_at=now)
    insert(conn, "datasets", id="drecords", organ="liver", name="d", pair_count=1, size_bytes=1,
           dataset_hash="0" * 64, manifest_key="drecords/manifest.json", status="ready", created_at=now,
           uploaded_by_user_id=user)  # fmt: skip
    return {"segmentation": seg, "evaluation": ev, "dataset": "drecords", "feedback": thread, "user": user}


def table_rows(engine) -> dict[str, list[tuple]]:
    """Every row of every table (alembic_version too), in a stable order, as plain tuples."""
    with engine.connect() as conn:
        tables = sorted(inspect(conn).get_table_names())
        return {
            t: sorted((tuple(r) for r in conn.execute(text(f"SELECT * FROM {t}")).all()), key=repr)
            for t in tables
        }
