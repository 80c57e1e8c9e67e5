"""The local PACS (tools/pacs_server.py): Orthanc with DICOMweb, generated private credentials, nothing
answered without them, data kept across a restart, only the local Orthanc managed by `make up`."""

from __future__ import annotations

import json
import stat

import httpx
import pytest

from common.settings import Settings
from tests.pacsdata import ct_series
from tools.pacs_server import PacsServer, local_port

pytestmark = pytest.mark.integration


def test_credentials_are_generated_private_and_required(pacs_server):
    for path in (pacs_server.credentials_path, pacs_server.config_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = json.loads(pacs_server.credentials_path.read_text())
    assert set(creds) == {"username", "password"} and len(creds["password"]) >= 24
    for auth in (None, (creds["username"], "wrong")):
        for path in ("/dicom-web/studies", "/system", "/instances"):
            assert httpx.get(pacs_server.base_url + path, auth=auth, timeout=5).status_code == 401
    assert httpx.get(pacs_server.url + "/studies", auth=tuple(creds.values()), timeout=5).status_code == 200


def test_data_survive_a_restart(pacs_server, pacs, pacs_restarted):
    series = ct_series(2, patient_id="P-RESTART")
    pacs.store(series, series[0].StudyInstanceUID)
    assert pacs_server.stop() is True and pacs_server.running_pid() is None
    pacs_server.start()
    assert [s.study_uid for s in pacs.search_studies(patient_id="P-RESTART")] == [series[0].StudyInstanceUID]


def test_only_a_pacs_on_this_machine_is_run_locally(tmp_path):
    assert local_port(Settings(state_dir=tmp_path)) == 8042  # the default: Orthanc under `make up`
    hospital = Settings(state_dir=tmp_path, pacs_url="https://pacs.hospital.example/dicom-web")
    assert local_port(hospital) is None and PacsServer.from_settings(hospital) is None
    other_port = Settings(state_dir=tmp_path, pacs_url="http://localhost:18042/dicom-web")
    server = PacsServer.from_settings(other_port)
    assert server.port == 18042 and server.url == "http://127.0.0.1:18042/dicom-web"
