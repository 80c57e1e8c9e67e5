"""common.model_store on a real SeaweedFS and a real liver TorchServe: upload + register as a new version,
immutability of versions (Conflict), refusal of mismatched archives/cards, organ server down."""

from __future__ import annotations

import json

import pytest

from common.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from common.launcher import free_port
from common.model_store import register_version, store_keys
from common.torchserve_client import ManagementClient
from tests.fixtures.torchserve import build_test_mar

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def mar_with_card(tmp_path, version: str):
    return build_test_mar("liver", tmp_path, "liver", version, card={"organ": "liver", "version": version})


def test_registers_a_new_version_without_making_it_default(
    tmp_path, objectstore, torchserve_liver, liver_management
):
    mar = mar_with_card(tmp_path, "reg-1")
    name = torchserve_liver.model_name
    try:
        done = register_version(objectstore, liver_management, mar, "liver", "reg-1")
        assert (done["mar_key"], done["card_key"]) == store_keys("liver", "liver", "reg-1")
        assert done["mar_key"] == "liver/liver-reg-1.mar" and done["default"] is False
        stored_card = json.loads(objectstore.get_bytes(objectstore.buckets.models, done["card_key"]))
        assert stored_card["mar_sha256"] == done["sha256"]
        assert objectstore.stat(objectstore.buckets.models, done["mar_key"]).size == mar.stat().st_size
        assert liver_management.describe(name, "reg-1")[0]["modelVersion"] == "reg-1"
        assert liver_management.describe(name)[0]["modelVersion"] == torchserve_liver.version  # unchanged

        with pytest.raises(Conflict, match="version reg-1 is already registered"):
            register_version(objectstore, liver_management, mar, "liver", "reg-1", set_default=True)
        assert liver_management.describe(name)[0]["modelVersion"] == torchserve_liver.version
    finally:
        liver_management.unregister(name, "reg-1")


def test_a_different_archive_stored_under_the_version_is_a_conflict(
    tmp_path, objectstore, torchserve_liver, liver_management
):
    mar = mar_with_card(tmp_path, "reg-2")
    mar_key, _ = store_keys("liver", "liver", "reg-2")
    objectstore.put_bytes(objectstore.buckets.models, mar_key, b"another archive")
    with pytest.raises(Conflict, match="already holds a different archive"):
        register_version(objectstore, liver_management, mar, "liver", "reg-2")
    with pytest.raises(NotFound):
        liver_management.describe(torchserve_liver.model_name, "reg-2")


def test_archive_version_and_card_must_match(tmp_path, objectstore, liver_management):
    mar = mar_with_card(tmp_path, "reg-3")
    with pytest.raises(InvalidInput, match="packaged as version 'reg-3', not 'reg-4'"):
        register_version(objectstore, liver_management, mar, "liver", "reg-4")
    with pytest.raises(InvalidInput, match="invalid version"):
        register_version(objectstore, liver_management, mar, "liver", "../x")
    with pytest.raises(InvalidInput, match="unknown organ 'kidney'"):
        register_version(objectstore, liver_management, mar, "kidney", "reg-3")
    card = mar.with_suffix(".json")
    card.write_text(json.dumps({**json.loads(card.read_text()), "mar_sha256": "0" * 64}))
    with pytest.raises(InvalidInput, match="describes a different archive"):
        register_version(objectstore, liver_management, mar, "liver", "reg-3")
    assert not objectstore.list(objectstore.buckets.models, "liver/liver-reg-3")


def test_organ_server_down_is_service_unavailable_and_uploads_nothing(tmp_path, objectstore):
    mar = mar_with_card(tmp_path, "reg-5")
    with ManagementClient(f"127.0.0.1:{free_port()}", "key", timeout=5) as down:
        with pytest.raises(
            ServiceUnavailable, match="cannot register liver reg-5: organ server .* unavailab"
        ):
            register_version(objectstore, down, mar, "liver", "reg-5")
    assert not objectstore.list(objectstore.buckets.models, "liver/liver-reg-5")


def test_cli_refuses_set_default_without_register(capsys):
    from common.cli import main

    assert main(["train", "--organ", "liver", "--data", "x", "--set-default"]) == 2
    assert "--set-default needs --register" in capsys.readouterr().err
