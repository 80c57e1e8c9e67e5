"""The models page's promotion gate, clicked in a browser over the real stack: a researcher sees an organ's
versions and promoting a worse candidate is refused with the reference-set comparison on the page (both mean
Dice values, the drop and the drop allowed); an admin forces it (an empty reason refused with a clear
message, then with a written one); the table shows the new default; rollback restores the previous one.
TorchServe's default follows every step.

The candidate is a real second version registered with the test cells TorchServe: a network that finds
nothing. The reference set's labels are what the default itself finds, so the default scores well on it and
the candidate does not."""

from __future__ import annotations

import io
import re
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from playwright.sync_api import expect
from sqlalchemy import select

from common.torchserve_client import InferenceClient, ManagementClient
from gateway.core.db import session_scope
from gateway.models import ModelVersion
from gateway.web.i18n import EN
from services.spec import load_organ_spec
from tests.fixtures.torchserve import script_to
from tests.web.helpers import disc_image, png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORGAN = "cells"  # the other web tests look at liver's versions; this one changes cells' default and back
CANDIDATE = "2"
# the gate evaluates both versions on the reference set; untrained models on a shared 2-core machine
GATE_TIMEOUT_MS = 60_000
REASON = "accepted for the staining trial despite the reference set"


class FindsNothing(torch.nn.Module):
    """Logits far below zero everywhere: no pixel is ever foreground."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], -20.0)


@dataclass
class Gate:
    default: str  # the organ's default version (the test TorchServe's "1")


def _register_candidate(endpoint, tmp_path) -> None:
    """Package FindsNothing as version CANDIDATE of the organ's model and load it into its TorchServe."""
    from trainer.package import build_mar

    scripted = script_to(tmp_path / "finds-nothing.pt", FindsNothing())
    mar = build_mar(scripted, ORGAN, load_organ_spec(ORGAN), tmp_path, endpoint.model_name, CANDIDATE)
    shutil.copy(mar, endpoint.model_store / f"{endpoint.model_name}-{CANDIDATE}.mar")
    with ManagementClient(endpoint.grpc_management_address, endpoint.management_key, timeout=120) as mgmt:
        mgmt.register(f"{endpoint.model_name}-{CANDIDATE}.mar", endpoint.model_name, version=CANDIDATE)


def _reference_zip(endpoint, threshold: float) -> bytes:
    """Two RGB tiles labelled with what the organ's default version finds in them at `threshold`."""
    buf = io.BytesIO()
    with (
        zipfile.ZipFile(buf, "w") as zf,
        InferenceClient(endpoint.grpc_inference_address, endpoint.inference_key, timeout=60) as client,
    ):
        for i in range(2):
            tile = png_bytes(np.repeat(disc_image(32, seed=i)[..., None], 3, axis=2))
            probability = np.asarray(Image.open(io.BytesIO(client.predict(endpoint.model_name, tile))))
            label = ((probability >= threshold * 255) * 255).astype(np.uint8)
            if not label.any():
                pytest.fail(f"the default {ORGAN} model finds nothing in tile {i}: no label to gate on")
            zf.writestr(f"{i:03d}.png", tile)
            zf.writestr(f"{i:03d}_mask.png", png_bytes(label))
    return buf.getvalue()


def _signed_in_csrf(web, browser_page, who: str):
    """A page signed in as `who` for API calls, and its CSRF header."""
    page = browser_page()
    web.sign_in(page, who, next_path="/profile")
    return page, {"X-CSRF-Token": page.locator('meta[name="csrf-token"]').get_attribute("content")}


def _freeze_reference_set(web, browser_page, endpoint) -> None:
    """A doctor uploads the reference tiles as a dataset; a researcher freezes it as the reference set."""
    page, csrf = _signed_in_csrf(web, browser_page, "doctor")
    archive = {"name": "reference.zip", "mimeType": "application/zip",
               "buffer": _reference_zip(endpoint, load_organ_spec(ORGAN).default_threshold)}  # fmt: skip
    uploaded = page.request.post(
        "/api/v1/datasets",
        multipart={"organ": ORGAN, "name": "cells-reference", "file": archive},
        headers=csrf,
    )
    assert uploaded.ok, uploaded.text()
    page, csrf = _signed_in_csrf(web, browser_page, "researcher")
    frozen = page.request.put(
        f"/api/v1/models/{ORGAN}/reference-set", data={"dataset_id": uploaded.json()["id"]}, headers=csrf
    )
    assert frozen.ok, frozen.text()


def _versions(web) -> dict[str, str]:
    with session_scope(web.engine) as session:
        rows = session.scalars(select(ModelVersion).where(ModelVersion.organ == ORGAN))
        return {row.version: row.state for row in rows}


def _torchserve_default(endpoint) -> str:
    with ManagementClient(endpoint.grpc_management_address, endpoint.management_key, timeout=60) as mgmt:
        return mgmt.describe(endpoint.model_name)[0]["modelVersion"]


@pytest.fixture
def gate(web, browser_page, torchserve_cells, monkeypatch, tmp_path) -> Iterator[Gate]:
    """A candidate version recorded and registered with the cells TorchServe, and a reference set; the gateway
    reaches the test TorchServe's management API (the test server's address and key, not the configured
    ones). Afterwards: the default is version 1 again, in TorchServe and in the database."""
    endpoint = torchserve_cells
    monkeypatch.setattr(
        "common.model_store.management_client",
        lambda organ, settings=None, **kw: ManagementClient(
            endpoint.grpc_management_address, endpoint.management_key, timeout=120
        ),
    )
    default = next(v for v, state in _versions(web).items() if state == "default")
    _register_candidate(endpoint, tmp_path)
    try:
        with session_scope(web.engine) as session:
            session.add(
                ModelVersion(
                    organ=ORGAN,
                    model_name=endpoint.model_name,
                    version=CANDIDATE,
                    state="candidate",
                    default_threshold=0.5,
                    created_by="test",
                    metrics={"val_dice": 0.0},
                )
            )
        _freeze_reference_set(web, browser_page, endpoint)
        yield Gate(default=default)
    finally:
        with ManagementClient(endpoint.grpc_management_address, endpoint.management_key, timeout=120) as mgmt:
            mgmt.set_default(endpoint.model_name, default)
            mgmt.unregister(endpoint.model_name, CANDIDATE)
        with session_scope(web.engine) as session:
            for row in session.scalars(select(ModelVersion).where(ModelVersion.organ == ORGAN)):
                row.state = "default" if row.version == default else "retired"
        web.app.state.clinic.directory.invalidate()


def _row(page, version: str):
    return page.locator(f'#versions-table tr[data-version="{version}"]')


def _gate_event(page, action: str) -> dict:
    """The gate's numbers as the API recorded them in the candidate's last `action` event."""
    detail = page.request.get(f"/api/v1/models/{ORGAN}/versions/{CANDIDATE}").json()
    return [e for e in detail["events"] if e["action"] == action][-1]["detail"]


def _expect_comparison(page, web, gate: Gate, detail: dict) -> None:
    box = page.locator("#comparison")
    expect(box).to_be_visible()
    expect(box.locator('[data-field="candidate"]')).to_have_text(
        f"v{CANDIDATE}: {detail['candidate_mean_dice']:.3f}"
    )
    expect(box.locator('[data-field="default"]')).to_have_text(
        f"v{gate.default}: {detail['default_mean_dice']:.3f}"
    )
    expect(box.locator('[data-field="drop"]')).to_have_text(f"{detail['dice_drop']:.3f}")
    expect(box.locator('[data-field="allowed"]')).to_have_text(f"{web.settings.promotion_max_dice_drop:.3f}")


def test_worse_candidate_refused_forced_by_an_admin_and_rolled_back(
    web, browser_page, gate, torchserve_cells
):
    # --- a researcher: the versions, a refused promotion with the comparison ---
    page = browser_page()
    web.sign_in(page, "researcher", next_path="/models")
    page.get_by_label("Organ").select_option(ORGAN)
    expect(_row(page, CANDIDATE)).to_contain_text("candidate")
    expect(_row(page, gate.default)).to_contain_text("default")
    expect(page.get_by_label("Force", exact=True)).to_have_count(0)  # only an admin may force
    _row(page, CANDIDATE).get_by_role("button", name="Promote to default").click()
    expect(page.locator("#comparison-verdict")).to_have_text(
        EN["models.gate_refused"], timeout=GATE_TIMEOUT_MS
    )
    refused = _gate_event(page, "promotion_refused")
    assert refused["dice_drop"] > web.settings.promotion_max_dice_drop
    assert refused["candidate_mean_dice"] < refused["default_mean_dice"]
    _expect_comparison(page, web, gate, refused)
    expect(page.locator("#models-error")).to_be_hidden()
    expect(_row(page, gate.default)).to_contain_text("default")
    assert _versions(web) == {gate.default: "default", CANDIDATE: "candidate"}
    assert _torchserve_default(torchserve_cells) == gate.default
    web.shot(page, "models-promotion-refused")

    # --- an admin forces it: an empty reason first, then a written one ---
    page = browser_page()
    web.sign_in(page, "admin", next_path="/models")
    page.get_by_label("Organ").select_option(ORGAN)
    expect(_row(page, CANDIDATE)).to_contain_text("candidate")
    page.get_by_label("Force", exact=True).check()
    _row(page, CANDIDATE).get_by_role("button", name="Promote to default").click()
    expect(page.locator("#models-error")).to_have_text(
        "A forced promotion needs a written reason (at least 10 characters)."
    )
    expect(page.locator("#comparison")).to_be_hidden()
    assert _versions(web)[CANDIDATE] == "candidate"
    web.shot(page, "models-force-needs-a-reason")

    page.get_by_label("Reason (needed to force a promotion)").fill(REASON)
    _row(page, CANDIDATE).get_by_role("button", name="Promote to default").click()
    expect(page.locator("#models-ok")).to_have_text(
        f"Version {CANDIDATE} is now the default.", timeout=GATE_TIMEOUT_MS
    )
    expect(page.locator("#comparison-verdict")).to_have_text(EN["models.gate_forced"])
    forced = _gate_event(page, "forced_promotion")
    _expect_comparison(page, web, gate, forced)
    expect(_row(page, CANDIDATE).locator(".badge")).to_have_text("default")
    expect(_row(page, gate.default).locator(".badge")).to_have_text("retired")
    assert _versions(web) == {gate.default: "retired", CANDIDATE: "default"}
    assert _torchserve_default(torchserve_cells) == CANDIDATE
    detail = page.request.get(f"/api/v1/models/{ORGAN}/versions/{CANDIDATE}").json()
    assert detail["events"][-1]["reason"] == REASON
    web.shot(page, "models-forced")

    # --- rollback restores the previous default ---
    page.get_by_role("button", name="Roll back").click()
    expect(page.locator("#models-ok")).to_have_text(
        f"Rolled back: version {gate.default} is the default again.", timeout=GATE_TIMEOUT_MS
    )
    expect(_row(page, gate.default).locator(".badge")).to_have_text("default")
    expect(_row(page, CANDIDATE).locator(".badge")).to_have_text("retired")
    assert _versions(web) == {gate.default: "default", CANDIDATE: "retired"}
    assert _torchserve_default(torchserve_cells) == gate.default
    web.shot(page, "models-rolled-back")


def test_an_answer_for_the_organ_left_does_not_replace_the_one_chosen(web, browser_page):
    """The first organ's versions are still on their way when the researcher picks the other organ: the table
    ends with the organ picked, whichever answer comes last (a fresh-clone run's promotion test timed out on a
    candidate row gone from under its click, as it would if the organ left had been drawn over it)."""
    page = browser_page()
    held = []
    page.route(
        re.compile(r"/api/v1/models/[^/]+/versions$"),
        lambda route: held.append(route) if not held else route.continue_(),
    )
    web.sign_in(page, "researcher", next_path="/models")
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the page asked for no versions"
    first = held[0].request.url.split("/models/")[1].split("/")[0]
    other = next(organ for organ in ("liver", "cells") if organ != first)
    page.get_by_label("Organ").select_option(other)
    wanted = {v["version"] for v in page.request.get(f"/api/v1/models/{other}/versions").json()["versions"]}
    rows = page.locator("#versions-table tbody tr")
    chosen = re.compile("^(?:" + "|".join(map(re.escape, wanted)) + ")$")
    expect(rows.first).to_have_attribute("data-version", chosen)  # the organ picked is drawn
    # the held answer, its versions renamed so that the organ left is told apart even when both organs
    # have the same version numbers
    answer = held[0].fetch()
    body = answer.json()
    for version in body["versions"]:
        version["version"] = f"left-{version['version']}"
    with page.expect_response(lambda r: f"/models/{first}/versions" in r.url):
        held[0].fulfill(response=answer, json=body)
    page.wait_for_timeout(300)  # the late answer has been read by the page
    assert {tr.get_attribute("data-version") for tr in rows.all()} == wanted
