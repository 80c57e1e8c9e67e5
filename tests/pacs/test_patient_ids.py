"""The PACS PatientID as MedSeg keeps it (gateway/service/pacs.py): a pseudonymous ID stays itself, anything
else becomes PACS-<keyed hash>, stable for one key and different under another; the key is generated once,
private, and required in production."""

from __future__ import annotations

import stat

import pytest

from common.errors import ServiceUnavailable
from common.settings import Settings
from gateway.service.dataplane import check_patient_id
from gateway.service.pacs import PATIENT_KEY_FILE, medseg_patient_id, patient_key


@pytest.mark.parametrize("pacs_id", ["P-0042", "LITS-000", "2024.17:3", "MRN123456"])
def test_a_pseudonymous_id_is_kept_as_it_is(pacs_id):
    assert medseg_patient_id(pacs_id, b"k") == pacs_id


@pytest.mark.parametrize("pacs_id", ["DOE^JOHN", "Anna Schmidt", "张三", "P 0042", "-x-", "A" * 65])
def test_anything_else_becomes_a_keyed_hash_that_passes_the_rule(pacs_id):
    mapped = medseg_patient_id(pacs_id, b"key-1")
    assert mapped.startswith("PACS-") and len(mapped) == 25 and check_patient_id(mapped) == mapped
    assert pacs_id not in mapped
    assert medseg_patient_id(pacs_id, b"key-1") == mapped  # the same patient, the same ID
    assert medseg_patient_id(pacs_id, b"key-2") != mapped  # not a plain hash anyone can recompute


def test_no_patient_id_maps_to_none():
    assert medseg_patient_id(None, b"k") is None and medseg_patient_id("  ", b"k") is None


def test_the_key_is_generated_once_and_private(tmp_path):
    settings = Settings(state_dir=tmp_path)
    key = patient_key(settings)
    assert len(key) == 64 and patient_key(settings) == key
    assert stat.S_IMODE((tmp_path / PATIENT_KEY_FILE).stat().st_mode) == 0o600
    assert patient_key(Settings(state_dir=tmp_path, pacs_patient_key="from-a-secret")) == b"from-a-secret"


def test_production_needs_a_configured_key(tmp_path):
    with pytest.raises(ServiceUnavailable) as refused:
        patient_key(Settings(state_dir=tmp_path, environment="production"))
    assert "MEDSEG_PACS_PATIENT_KEY" in refused.value.message
    assert not (tmp_path / PATIENT_KEY_FILE).exists()
