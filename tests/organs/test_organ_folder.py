"""An organ is one folder: a new `services/<organ>/` (here `spleen`, a copy of liver's folder in a temporary
repository) is found by the trainer, the gateway, the stack launcher and the Kubernetes manifests with no
other file touched."""

from __future__ import annotations

import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from common.settings import Settings
from gateway.service.dataplane import DataPlane, organ_deadline_s
from gateway.service.organs import OrganRegistry
from services.spec import SERVICES_DIR, RecipeError, load_recipe, organ_dirs
from tests.fixtures.stack import bearer
from tests.gateway.fakes import FakeClient, FakeStore
from tests.k8s.conftest import K8S, by_kind, render
from tools import k8s_organs
from trainer.data import find_pairs, recipe_data
from trainer.train import default_config


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _add_spleen(services: Path) -> Path:
    """services/spleen/: liver's folder under a new name, its deadline and training data its own."""
    spleen = services / "spleen"
    shutil.copytree(services / "liver", spleen)
    spec = yaml.safe_load((spleen / "spec.yaml").read_text())
    spec.update(name="spleen", display_name="Spleen (abdominal CT)", label="spleen", inference_deadline_s=12)
    (spleen / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    recipe = yaml.safe_load((spleen / "recipe.yaml").read_text())
    recipe.update(budget_minutes=7, data={"train": "data/spleen/train", "layout": "paired"})
    (spleen / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return spleen


def _spleen_data(repo: Path) -> Path:
    """Two 32×32 slices with masks, side by side (the "paired" layout the recipe names)."""
    train = repo / "data" / "spleen" / "train"
    train.mkdir(parents=True)
    for i in range(2):
        (train / f"{i:03d}.png").write_bytes(_png(np.full((32, 32), 60 + i, np.uint8)))
        (train / f"{i:03d}_mask.png").write_bytes(_png(np.pad(np.full((8, 8), 255, np.uint8), 12)))
    return train


def _tiny_mar(path: Path, organ: str, version: str) -> None:
    """An archive with nothing but its manifest: what the launcher and the gateway look at."""
    with zipfile.ZipFile(path, "w") as mar:
        manifest = {"model": {"modelName": organ, "modelVersion": version}}
        mar.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))


def _fake_plane(registry: OrganRegistry, settings: Settings) -> DataPlane:
    """A data plane over the registry's organs with fake servers and store (what the gateway lists)."""
    return DataPlane(
        registry,
        {name: FakeClient() for name in registry.names()},
        FakeStore(),
        results_bucket="results",
        record_segmentation=lambda session, **row: None,
        max_upload_bytes=settings.max_upload_bytes,
        max_image_pixels=settings.max_image_pixels,
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A temporary repository: the real services/ and k8s/, plus services/spleen/ and a spleen .mar."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(SERVICES_DIR, root / "services", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(K8S, root / "k8s")
    _add_spleen(root / "services")
    _spleen_data(root)
    (root / "model-store").mkdir()
    _tiny_mar(root / "model-store" / "spleen.mar", "spleen", "1")
    return root


@pytest.fixture(scope="module")
def settings(repo) -> Settings:
    return Settings(
        services_dir=repo / "services",
        model_store_dir=repo / "model-store",
        state_dir=repo / ".medseg",
        organ_inference_timeouts_s={},
    )


def test_the_real_repository_is_untouched(repo):
    assert "spleen" not in organ_dirs()
    assert not k8s_organs.differences()


def test_the_trainer_builds_its_training_config_from_the_recipe(repo, settings):
    config = default_config("spleen", services_dir=settings.services_dir)
    liver = default_config("liver")
    assert config.arch == liver.arch and config.widths == liver.widths == (12, 24, 48)
    assert config.batch_size == liver.batch_size and config.augment == liver.augment
    assert config.time_budget_min == 7.0
    assert default_config("spleen", services_dir=settings.services_dir, arch="unet").arch == "unet"
    data = recipe_data("spleen", settings.services_dir)
    assert data == repo / "data" / "spleen" / "train"
    assert [name for name, _, _ in find_pairs(data)] == ["000", "001"]


def test_the_gateway_lists_it_with_its_deadline(settings, http_client_for, api_keys):
    registry = OrganRegistry(settings.services_dir, settings.model_store_dir)
    assert sorted(registry.names()) == ["cells", "hippocampus", "liver", "spleen"]
    plane = _fake_plane(registry, settings)
    response = http_client_for(plane, settings).get("/api/v1/organs", headers=bearer(api_keys["evaluate"]))
    assert response.status_code == 200, response.text
    organs = {o["name"]: o for o in response.json()["organs"]}
    assert set(organs) == {"cells", "hippocampus", "liver", "spleen"}
    assert organs["spleen"]["model"] == {**organs["spleen"]["model"], "name": "spleen", "version": "1"}
    deadlines = {o.name: organ_deadline_s(settings, o) for o in registry.all()}
    default = settings.inference_timeout_s
    assert deadlines == {"cells": 30.0, "hippocampus": default, "liver": default, "spleen": 12.0}
    override = settings.model_copy(update={"organ_inference_timeouts_s": {"spleen": 3.0}})
    assert organ_deadline_s(override, registry.get("spleen")) == 3.0


def test_the_stack_launcher_starts_it(settings):
    from tools.stack import _organs_with_models

    ready, skipped = _organs_with_models(settings)
    # only spleen has a .mar here
    assert ready == ["spleen"] and sorted(skipped) == ["cells", "hippocampus", "liver"]


def test_the_kubernetes_manifests_deploy_it(repo):
    services, k8s = repo / "services", repo / "k8s"
    assert k8s_organs.differences(services, k8s), "the copied manifests know no spleen yet"
    k8s_organs.write(services, k8s)
    assert not k8s_organs.differences(services, k8s)
    objects = render(k8s / "overlays" / "dev")
    deployment = by_kind(objects, "Deployment")["torchserve-spleen"]
    assert deployment["spec"]["selector"]["matchLabels"]["medseg.io/organ"] == "spleen"
    assert {"torchserve-spleen", "torchserve-pods-spleen"} <= set(by_kind(objects, "Service"))
    assert "torchserve-spleen" in by_kind(objects, "HorizontalPodAutoscaler")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    config = by_kind(objects, "ConfigMap")[volumes["organ-config"]["configMap"]["name"]]
    assert config["data"]["spec.yaml"] == (services / "spleen" / "spec.yaml").read_text()
    config_maps = by_kind(objects, "ConfigMap")
    gateway = next(c for n, c in config_maps.items() if n.startswith("medseg-gateway-"))
    trainer = next(c for n, c in config_maps.items() if n.startswith("medseg-trainer-"))
    inference = json.loads(gateway["data"]["MEDSEG_ORGAN_ADDRESSES"])
    management = json.loads(trainer["data"]["MEDSEG_ORGAN_MANAGEMENT_ADDRESSES"])
    assert inference["spleen"] == "dns:///torchserve-pods-spleen:7070"
    assert management["spleen"] == "dns:///torchserve-pods-spleen:7071"  # every pod (headless Service)
    rollout = by_kind(objects, "Role")["medseg-gateway-model-rollout"]["rules"][0]["resourceNames"]
    assert sorted(rollout) == [
        "torchserve-cells", "torchserve-hippocampus", "torchserve-liver", "torchserve-spleen"
    ]  # fmt: skip


def test_removing_the_folder_removes_its_manifests(tmp_path):
    services, k8s = tmp_path / "services", tmp_path / "k8s"
    shutil.copytree(SERVICES_DIR, services, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(K8S, k8s)
    _add_spleen(services)
    k8s_organs.write(services, k8s)
    shutil.rmtree(services / "spleen")
    assert k8s / "base" / "organs" / "spleen" in k8s_organs.differences(services, k8s)
    k8s_organs.write(services, k8s)
    assert not (k8s / "base" / "organs" / "spleen").exists()
    assert not k8s_organs.differences(services, k8s)


def test_a_broken_recipe_names_the_file_and_the_fix(tmp_path):
    services = tmp_path / "services"
    shutil.copytree(SERVICES_DIR / "liver", services / "spleen")
    recipe = services / "spleen" / "recipe.yaml"
    data = "data: {train: x, layout: paired}\n"
    for text, message in (
        ("arch: erunet\nbatch_size: 8\n" + data, "`budget_minutes` must be a positive float"),
        ("arch: erunet\nbudget_minutes: 5\nbatch_size: 8\nepochz: 3\n" + data, "unknown field(s) epochz"),
        ("arch: erunet\nbudget_minutes: 5\nbatch_size: 8\ndata: {train: x, layout: zip}\n", "data.layout"),
        ("arch: erunet\nbudget_minutes: 5\nbatch_size: 8\nwidths: 12\n" + data, "`widths` must be a list"),
        (
            "arch: erunet\nbudget_minutes: 5\nbatch_size: 8\n"
            "data: {train: x, layout: paired, groups: slices}\n",
            "data.groups must be one of pairs, volumes, not 'slices'",
        ),
        (
            "arch: erunet\nbudget_minutes: 5\nbatch_size: 8\nprecision: fp16\n" + data,
            "`precision` must be one of f32, bf16, not 'fp16'",
        ),
        (
            "arch: erunet\nbudget_minutes: 5\nbatch_size: 8\nema: 1.5\n" + data,
            "`ema` must be a decay per step between 0 and 1 (e.g. 0.99), not 1.5",
        ),
        (
            "arch: erunet\nbudget_minutes: 5\nbatch_size: 8\nloss: dice\n" + data,
            "`loss` must be one of dicefocal, dicefocal-batch, bce, not 'dice'",
        ),
    ):
        recipe.write_text(text)
        with pytest.raises(RecipeError, match=f"{re.escape(str(recipe))}: .*{re.escape(message)}"):
            load_recipe("spleen", services)
    recipe.write_text("arch: erunet\nbudget_minutes: 5\nbatch_size: 8\naugment: {flipz: true}\n" + data)
    with pytest.raises(RecipeError, match=r"recipe.yaml: unknown augment field\(s\) flipz"):
        default_config("spleen", services_dir=services)
    recipe.unlink()
    with pytest.raises(RecipeError, match="recipe.yaml is missing"):
        load_recipe("spleen", services)


def test_a_3d_multi_label_organ_is_one_folder_too(tmp_path, http_client_for, api_keys):
    """A copy of hippocampus's folder under another name (3-D, three labels) is listed with its labels and
    dimensions, and its 2-D images are refused naming the studies endpoint: nothing outside the folder."""
    services = tmp_path / "services"
    shutil.copytree(SERVICES_DIR, services, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(services / "hippocampus", services / "thalamus")
    spec = yaml.safe_load((services / "thalamus" / "spec.yaml").read_text())
    spec.pop("translations")  # the hippocampus's words
    spec.update(
        name="thalamus", display_name="Thalamus (brain MRI)", label="thalamus", labels=["a", "b", "c"]
    )
    (services / "thalamus" / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    settings = Settings(services_dir=services, model_store_dir=tmp_path, state_dir=tmp_path / ".medseg")
    registry = OrganRegistry(settings.services_dir, settings.model_store_dir)
    plane = _fake_plane(registry, settings)
    http = http_client_for(plane, settings)
    organs = {
        o["name"]: o
        for o in http.get("/api/v1/organs", headers=bearer(api_keys["evaluate"])).json()["organs"]
    }
    assert (organs["thalamus"]["labels"], organs["thalamus"]["dimensions"]) == (["a", "b", "c"], 3)
    response = http.post(
        "/api/v1/segment",
        headers=bearer(api_keys["segment"]),
        data={"organ": "thalamus"},
        files={"file": ("x.png", _png(np.zeros((32, 32), np.uint8)))},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "organ_needs_volume"
    assert "POST /api/v1/studies" in response.json()["error"]["message"]
    kept = http.post(  # a kept evaluation of a 3-D organ scores volumes: 2-D pairs refused, before any work
        "/api/v1/evaluations",
        headers=bearer(api_keys["evaluate"]),
        data={"organ": "thalamus"},
        files=[
            ("images", ("x.png", _png(np.zeros((32, 32), np.uint8)))),
            ("labels", ("x.png", _png(np.zeros((32, 32), np.uint8)))),
        ],
    )
    assert kept.status_code == 400 and kept.json()["error"]["code"] == "organ_needs_volume", kept.text
