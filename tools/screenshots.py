"""Screenshots of every screen of the web UI in English and Chinese (issue 18, "Must show"): make screenshots.

    python -m tools.screenshots [--out docs/screenshots] [--lang en zh] [--only segment-ct history ...]

What it starts (a test stack under a temporary directory, stopped at the end): the object store, one
TorchServe per organ with the shipped models (model-store/liver.mar, cells.mar: real results, not an
untrained net's), and the gateway in this process (uvicorn on a free port) over a fresh SQLite database with
a doctor, a researcher, an admin and an account awaiting approval. As those people it fills every table
(segmentations of a real CT slice from ../shared/data/liver as DICOM, a dataset of liver slices, two tests of
it, a feedback thread with a reply, an API key, a study of 12 CT slices), then drives Debian's Chromium
(Playwright) through every page at 1280×800: the segment page with a CT result in the viewer and a histology
tile with its nuclei, a result opened again from the history, a test case's overlays opened large, the study
in the volume viewer, and the rest as each role sees them. Each picture is the window (not the whole page),
reduced to 256 colours (Pillow, optimised) to keep the repository small, written as <out>/<screen>-<lang>.png,
with an index (<out>/README.md) linked from the README's Web UI section.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 800}
PASSWORD = "correct horse battery"
ORGANS = ("liver", "cells")
PEOPLE = {  # name → (role, hospital, full name)
    "doctor": ("doctor", "St. Anna", "Dr. Anna Berg"),
    "researcher": ("researcher", None, "Li Wei"),
    "admin": ("admin", None, "Sam Admin"),
}
PATIENT = "P-0042"
RESULT_TIMEOUT_MS = 240_000  # a 1000² histology tile, four passes (the cells spec's TTA), on a busy machine


@dataclass
class Stack:
    base_url: str
    engine: object
    state_dir: Path


# --- the stack -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def running_stack(state_dir: Path) -> Iterator[Stack]:
    """Object store, both organs' TorchServe with the shipped models, and the gateway (in this process)."""
    from common.launcher import OrganServer, free_ports
    from common.settings import Settings
    from gateway.core.db import make_engine, run_migrations, session_scope
    from gateway.main import create_app
    from gateway.resources.accounts import service as accounts
    from gateway.service.dataplane import build_dataplane
    from gateway.service.model_registry import seed_from_model_store
    from tests.web.helpers import serving
    from tools.objectstore_server import ObjectStoreServer, free_objectstore_ports

    model_store = state_dir / "model-store"
    model_store.mkdir(parents=True)
    for organ in ORGANS:
        for suffix in (".mar", ".json"):
            shutil.copyfile(REPO / "model-store" / f"{organ}{suffix}", model_store / f"{organ}{suffix}")
    with contextlib.ExitStack() as cleanup:
        store = ObjectStoreServer(state_dir, free_objectstore_ports())
        logger.info("starting the object store on %s", store.endpoint)
        store.start(timeout=60)
        cleanup.callback(store.stop)
        servers = {}
        for organ in ORGANS:
            server = OrganServer(organ, state_dir / organ, model_store, models={organ: f"{organ}.mar"},
                                 ports=free_ports())  # fmt: skip
            logger.info("starting %s TorchServe on %s", organ, server.grpc_inference_address)
            cleanup.callback(server.stop)
            server.start(timeout=300)
            servers[organ] = server
        url = f"sqlite:///{state_dir / 'medseg.db'}"
        run_migrations(url)
        creds = store.credentials
        settings = Settings(
            state_dir=state_dir, model_store_dir=model_store, database_url=url, s3_endpoint=store.endpoint,
            s3_access_key=creds.access_key, s3_secret_key=creds.secret_key,
            organ_addresses={o: s.grpc_inference_address for o, s in servers.items()},
            organ_inference_keys={o: s.keys.inference for o, s in servers.items()},
            organ_inference_timeouts_s=dict.fromkeys(ORGANS, 240.0),
        )  # fmt: skip
        dataplane = build_dataplane(settings)
        cleanup.callback(dataplane.close)
        engine = make_engine(url)
        cleanup.callback(engine.dispose)
        with session_scope(engine) as session:
            for name, (role, hospital, full_name) in PEOPLE.items():
                accounts.create_user(
                    session, email=f"{name}@example.org", password=PASSWORD, full_name=full_name, role=role,
                    status="active", hospital=hospital, actor="screenshots",
                )  # fmt: skip
            accounts.create_user(
                session, email="new.doctor@example.org", password=PASSWORD, full_name="Chen Jing",
                role="doctor", status="pending", hospital="St. Anna", actor="screenshots",
            )  # fmt: skip
            seed_from_model_store(session, dataplane.registry)  # as `medseg serve` does at start
        app = create_app(settings, dataplane)
        with serving(app, engine, settings, name="screenshots-gateway") as url:
            yield Stack(url, engine, state_dir)


# --- what the tables hold ----------------------------------------------------------------------------------
def api(base_url: str, who: str):
    """An HTTP client signed in as `who` (its session cookie and CSRF token)."""
    import httpx

    client = httpx.Client(base_url=base_url, timeout=300)
    r = client.post("/api/v1/auth/sign-in", json={"email": f"{who}@example.org", "password": PASSWORD})
    r.raise_for_status()
    client.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return client


def ct_slice(index: int) -> tuple[str, bytes]:
    """A real abdominal CT slice (../shared/data/liver) as a scanner writes it: DICOM, Hounsfield units."""
    from tests.studydata import liver_dicom_series

    ((_, data),) = liver_dicom_series(index, 1, patient_id=None)
    return f"slice-{index:03d}.dcm", data


def histology_tile() -> bytes:
    """A MoNuSeg H&E tile (1000², ../shared/data/monuseg) as JPEG (the pages' upload limit)."""
    from tests.data import CELLS_TRAIN

    buf = io.BytesIO()
    Image.open(CELLS_TRAIN / "images" / "TCGA-18-5592-01Z-00-DX1.png").convert("RGB").save(
        buf, "JPEG", quality=92
    )
    return buf.getvalue()


def liver_dataset(first: int = 60, count: int = 4) -> bytes:
    from tests.data import LIVER_TRAIN

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for n in range(first, first + count):
            archive.write(LIVER_TRAIN / f"{n:03d}.png", f"{n:03d}.png")
            archive.write(LIVER_TRAIN / f"{n:03d}_mask.png", f"{n:03d}_mask.png")
    return buf.getvalue()


def fill_tables(base_url: str) -> dict[str, str]:
    """Rows in every table each person sees; the ids a screen's path names ({study})."""
    doctor = api(base_url, "doctor")
    for index, note in ((70, "follow-up in 3 months"), (80, None)):
        name, data = ct_slice(index)
        form = {"organ": "liver", "patient_id": PATIENT, "keep_image": "true"}
        r = doctor.post("/api/v1/segment", data=form, files={"file": (name, data)})
        r.raise_for_status()
        choice = {"threshold": 0.5, "note": note}
        doctor.post(f"/api/v1/segmentations/{r.json()['id']}/choice", json=choice).raise_for_status()
    r = doctor.post("/api/v1/datasets", data={"organ": "liver", "name": "Liver CT, St. Anna"},
                    files={"file": ("liver-ct.zip", liver_dataset())})  # fmt: skip
    r.raise_for_status()
    dataset = r.json()["id"]
    tests = []
    for _ in range(2):
        r = doctor.post("/api/v1/evaluations", data={"organ": "liver", "dataset_id": dataset})
        r.raise_for_status()
        tests.append(r.json())
    case = tests[0]["cases"][0]
    r = doctor.post(
        f"/api/v1/models/liver/versions/{tests[0]['model_version']}/feedback",
        json={
            "body": "The lower edge of the liver is cut off on this slice.",
            "evaluation_case_id": case["id"],
        },
    )
    r.raise_for_status()
    researcher = api(base_url, "researcher")
    reply = {
        "body": "Thanks: slices near the liver's tip are few in the training set; added to the next run."
    }
    researcher.post(f"/api/v1/feedback/{r.json()['id']}/replies", json=reply).raise_for_status()
    admin = api(base_url, "admin")
    admin.post("/api/v1/api-keys", json={"name": "PACS St. Anna", "scopes": ["segment"]}).raise_for_status()
    return {"study": study(doctor)}


def study(doctor, timeout: float = 900) -> str:
    """A volume (12 consecutive liver slices as NIfTI, tests/studydata.py) segmented as a study, once done."""
    from tests.studydata import liver_nifti

    files = [("files", ("liver.nii.gz", liver_nifti(40, 12), "application/gzip"))]
    r = doctor.post("/api/v1/studies", data={"organ": "liver", "patient_id": PATIENT}, files=files)
    r.raise_for_status()
    study_id, deadline = r.json()["id"], time.monotonic() + timeout
    while (status := doctor.get(f"/api/v1/studies/{study_id}").json()["status"]) not in ("done", "failed"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"study {study_id} still {status} after {timeout:.0f} s")
        time.sleep(2)
    if status != "done":
        raise RuntimeError(f"study {study_id} failed")
    return study_id


# --- the pictures ------------------------------------------------------------------------------------------
def save(page, out: Path, name: str, lang: str) -> Path:
    """The window as a 256-colour optimised PNG: <out>/<name>-<lang>.png."""
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    path = out / f"{name}-{lang}.png"
    shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True
    )
    logger.info(
        "%s (%d KB)",
        path.relative_to(REPO) if path.is_relative_to(REPO) else path,
        path.stat().st_size // 1024,
    )
    return path


@dataclass(frozen=True)
class Screen:
    name: str
    who: str | None  # None: signed out
    path: str
    prepare: Callable | None = None  # (page, files) -> None: what to do on the page before the picture
    caption: str = ""


def _segment(page, files: dict, organ: str, file_key: str) -> None:
    page.locator("#organ").select_option(organ)
    page.locator("#file").set_input_files(files[file_key])
    page.locator("#patient_id").fill(PATIENT)
    page.locator("#segment-form button[type=submit]").click()
    page.locator("#result").wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    page.locator("#viewer[data-overlay]").wait_for(timeout=60_000)
    page.locator("#result-heading").scroll_into_view_if_needed()
    page.evaluate("() => window.scrollTo(0, document.querySelector('#result').offsetTop - 8)")


def _ct(page, files):
    _segment(page, files, "liver", "ct")
    page.locator("#viewer-compare").select_option("6")  # the band between 0.5 and 0.8, in the second colour
    page.wait_for_timeout(300)


def _cells(page, files):
    _segment(page, files, "cells", "tile")
    page.locator('[data-field="nuclei-count"]').wait_for(timeout=120_000)
    page.locator("#viewer [data-action=actual]").click()  # the tile at its own pixels: outlines on the nuclei
    page.wait_for_timeout(1500)


def _history_viewer(page, files):
    page.locator('#history-table [data-action="view"]').first.click()
    page.locator("#result-viewer-viewer[data-overlay]").wait_for(timeout=60_000)
    page.wait_for_timeout(300)


def _model_test(page, files):
    page.locator("#organ").select_option("liver")
    page.locator("#dataset").select_option(index=1)
    page.locator("#test-form button[type=submit]").click()
    page.locator("#test-result").wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    page.evaluate("() => window.scrollTo(0, document.querySelector('#test-result').offsetTop - 8)")


def _model_test_overlay(page, files):
    _model_test(page, files)
    page.locator('#cases-table [data-action="overlay"]').first.click()
    page.locator("#overlay-viewer-viewer[data-overlay]").wait_for(timeout=60_000)
    page.wait_for_timeout(300)


def _compare(page, files):
    page.locator("#compare-form button[type=submit]").click()
    page.locator("#compare-result").wait_for(state="visible", timeout=60_000)
    page.evaluate("() => window.scrollTo(0, document.querySelector('#compare').offsetTop - 8)")


def _study(page, files):
    page.locator("#study-page[data-viewer='ready']").wait_for(timeout=120_000)
    page.wait_for_timeout(500)


def _pending_users(page, files):
    page.locator("#users-table tbody tr").first.wait_for()


SCREENS = [
    Screen("sign-in", None, "/sign-in", caption="Sign in"),
    Screen("register", None, "/register", caption="Register (an admin approves)"),
    Screen("segment-ct", "doctor", "/segment", _ct, "Segment: a CT slice in the viewer, 0.5 against 0.8"),
    Screen(
        "segment-cells", "doctor", "/segment", _cells, "Segment: an H&E tile in deep zoom, nuclei counted"
    ),
    Screen("history", "doctor", f"/history?patient_id={PATIENT}", caption="History with the patient's trend"),
    Screen("history-viewer", "doctor", "/history", _history_viewer, "A result opened again from the history"),
    Screen("datasets", "doctor", "/datasets", caption="Datasets"),
    Screen("model-test", "doctor", "/model-test", _model_test, "Model test: Dice, IoU, HD95 per image"),
    Screen(
        "model-test-overlay", "doctor", "/model-test", _model_test_overlay, "A test case's overlays, large"
    ),
    Screen("model-compare", "doctor", "/model-test", _compare, "Two tests compared case by case"),
    Screen("studies", "doctor", "/studies", caption="Studies: volumes as background jobs"),
    Screen("study", "doctor", "/studies/{study}", _study, "A study in the volume viewer"),
    Screen("feedback", "doctor", "/feedback", caption="Feedback threads with replies"),
    Screen("profile", "doctor", "/profile", caption="Profile"),
    Screen("training", "researcher", "/training", caption="Training jobs (researchers)"),
    Screen("models", "researcher", "/models", caption="Model versions and promotion (researchers)"),
    Screen("feedback-researcher", "researcher", "/feedback", caption="Feedback as a researcher sees it"),
    Screen("admin-users", "admin", "/admin/users", _pending_users, "Users (admins)"),
    Screen("admin-api-keys", "admin", "/admin/api-keys", caption="API keys (admins)"),
    Screen("admin-audit", "admin", "/admin/audit", caption="Audit log (admins)"),
    Screen("not-found", "doctor", "/no-such-page", caption="An error page"),
]


def take(
    base_url: str, out: Path, langs: list[str], only: set[str] | None, work: Path, ids: dict[str, str]
) -> list[Path]:
    from playwright.sync_api import sync_playwright

    files = {"ct": work / "slice-070.dcm", "tile": work / "tile.jpg"}
    files["ct"].write_bytes(ct_slice(70)[1])
    files["tile"].write_bytes(histology_tile())
    written, problems = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            for lang in langs:
                contexts: dict[str | None, object] = {}
                for screen in SCREENS:
                    if only and screen.name not in only:
                        continue
                    if screen.who not in contexts:
                        context = browser.new_context(base_url=base_url, viewport=VIEWPORT, locale="en-US")
                        context.set_default_timeout(60_000)
                        page = context.new_page()
                        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
                        if screen.who:
                            page.goto("/sign-in")
                            page.locator("#email").fill(f"{screen.who}@example.org")
                            page.locator("#password").fill(PASSWORD)
                            page.locator("form button[type=submit]").click()
                            page.wait_for_url(lambda url: "/sign-in" not in url)
                        page.goto(f"/set-language?lang={lang}&next=/sign-in")
                        contexts[screen.who] = context
                    page = contexts[screen.who].pages[0]
                    page.goto(screen.path.format(**ids))
                    page.wait_for_load_state("networkidle")
                    if screen.prepare:
                        screen.prepare(page, files)
                    written.append(save(page, out, screen.name, lang))
                for context in contexts.values():
                    context.close()
        finally:
            browser.close()
    if problems:
        logger.warning("the pages logged %d console errors: %s", len(problems), problems[:5])
    return written


def write_index(out: Path, langs: list[str]) -> Path:
    """<out>/README.md: every screen in each language, side by side."""
    lines = [
        "# Screenshots of the web UI",
        "",
        "Made by `make screenshots` (tools/screenshots.py): a test stack with the shipped models, Chromium "
        "at 1280×800, every screen in English and Chinese. Do not edit by hand: run it again.",
        "",
        "| screen | " + " | ".join({"en": "English", "zh": "中文"}[lang] for lang in langs) + " |",
        "|---|" + "---|" * len(langs),
    ]
    for screen in SCREENS:
        cells = [
            f"[![{screen.name}-{lang}]({screen.name}-{lang}.png)]({screen.name}-{lang}.png)" for lang in langs
        ]
        lines.append(f"| {screen.caption or screen.name} | " + " | ".join(cells) + " |")
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--lang", nargs="+", default=["en", "zh"], choices=["en", "zh"])
    parser.add_argument("--only", nargs="+", help="these screens only (names as in SCREENS)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not Path(CHROMIUM).exists():
        parser.error(f"{CHROMIUM} is missing: `make test-deps` installs Debian's chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medseg-screenshots-") as tmp:
        work = Path(tmp)
        with running_stack(work / "state") as stack:
            ids = fill_tables(stack.base_url)
            written = take(stack.base_url, args.out, args.lang, set(args.only or ()), work, ids)
    if not args.only:
        write_index(args.out, args.lang)
    total = sum(p.stat().st_size for p in written)
    logger.info("%d screenshots, %.1f MB in all, under %s", len(written), total / 1e6, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
