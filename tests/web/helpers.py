"""What the web tests share: the files they put into the pages' file inputs, an API client acting as a page's
person, and the layout checks a page must pass."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data import CELLS_TRAIN
from tests.services.test_imaging import dicom_bytes

PASSWORD = "correct horse battery"
# Every page an admin can open (all of them): the layout checks (tablet, laptop) go through each.
ADMIN_PAGES = [
    "/segment", "/studies", "/history", "/datasets", "/model-test", "/feedback", "/profile", "/training",
    "/models", "/admin/users", "/admin/api-keys", "/admin/audit",
]  # fmt: skip


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def disc_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """A grey image with a bright disc (something for an untrained model to produce masks from)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2.5) ** 2 < (size / 4) ** 2
    return np.clip(60 + 120 * disc + rng.normal(0, 10, (size, size)), 0, 255).astype(np.uint8)


def disc_label(size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (((yy - size / 2) ** 2 + (xx - size / 2.5) ** 2 < (size / 4) ** 2) * 255).astype(np.uint8)


def small_nifti(slices: int = 4) -> bytes:
    """A small CT volume (.nii.gz, HU): a soft-tissue disc in air, 2.5 mm slices (a study to list)."""
    import gzip

    import nibabel as nib

    yy, xx = np.mgrid[:32, :32]
    disc = np.where((yy - 16) ** 2 + (xx - 16) ** 2 < 100, 50, -1000).astype(np.int16)
    volume = np.repeat(disc[:, :, None], slices, axis=2)
    return gzip.compress(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.5, 1.0])).to_bytes(), mtime=0)


def dataset_zip(pairs: int = 2) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(pairs):
            zf.writestr(f"{i:03d}.png", png_bytes(disc_image(32, seed=i)))
            zf.writestr(f"{i:03d}_mask.png", png_bytes(disc_label(32)))
    return buf.getvalue()


def dicom_ct(size: int = 64) -> bytes:
    """A CT slice in Hounsfield units: air (-1000) around a soft-tissue disc (+50) holding a bone-bright
    spot (+700), stored as raw values with RescaleIntercept -1024 (what a scanner writes)."""
    yy, xx = np.mgrid[:size, :size]
    hu = np.full((size, size), -1000, np.int16)
    hu[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2] = 50
    hu[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 10) ** 2] = 700
    return dicom_bytes((hu + 1024).astype(np.int16), intercept=-1024)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(app, engine, settings, name: str = "web-gateway", timeout: float = 60) -> Iterator[str]:
    """`app` served by uvicorn in a thread on a free port of 127.0.0.1, over `engine`'s database and with
    `settings` (not those this process's environment names; its study workers too); yields its URL and stops
    it on exit. The web tests' gateway, and `make screenshots`' (tools/screenshots.py)."""
    import uvicorn
    from sqlalchemy.orm import sessionmaker

    from common.settings import get_settings
    from gateway.core.db import get_db, request_session

    factory = sessionmaker(bind=engine, expire_on_commit=False)

    def this_db() -> Iterator:
        yield from request_session(factory)

    app.dependency_overrides[get_db] = this_db
    app.dependency_overrides[get_settings] = lambda: settings
    app.state.clinic.studies.session_factory = factory  # the study workers use this database too
    app.state.clinic.evaluation_jobs.session_factory = factory  # and the evaluation workers
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def api_client(page):
    """An HTTP client acting as the person signed in on `page` (its session cookie and CSRF token), for
    setting up what a test needs faster than through the pages (e.g. several files in one form field)."""
    import httpx

    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    origin = "/".join(page.url.split("/")[:3])
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    return httpx.Client(base_url=origin, cookies=cookies, headers={"X-CSRF-Token": csrf}, timeout=180)


def labelled_cases(names: list[str], seed: int = 0) -> list[tuple[str, tuple[str, bytes, str]]]:
    """`files=` for POST /api/v1/evaluations: each image with its label, matched by file name."""
    files = []
    for i, name in enumerate(names):
        files.append(("images", (name, png_bytes(disc_image(64, seed=seed + i)), "image/png")))
        files.append(("labels", (name.replace(".png", "_mask.png"), png_bytes(disc_label(64)), "image/png")))
    return files


# What a person would stop at on a page, found by the browser itself (page.evaluate(LAYOUT_PROBLEMS, scope)):
# a button or badge whose label wraps onto a second line (its text is taller than one line: in Chinese a
# label breaks between any two characters, "回/复"), an action (button, link styled as one, a row's
# data-action link) outside the viewport's width, and a select too narrow for the option it shows ("管理"
# for "管理员"). `scope`: a CSS selector the checks are limited to ("body": the whole page).
LAYOUT_PROBLEMS = """scope => {
  const problems = [];
  const root = document.querySelector(scope) || document.body;
  const shown = el => {
    const box = el.getBoundingClientRect(), style = getComputedStyle(el);
    return box.width > 0 && box.height > 0 && style.visibility !== "hidden" && !el.closest("[hidden]");
  };
  const label = el => (el.innerText || el.value || el.getAttribute("aria-label") || "").trim().slice(0, 60);
  for (const el of root.querySelectorAll("button, .btn, .badge")) {
    if (!shown(el) || el.querySelector("img, svg, canvas, figure")) continue;
    const style = getComputedStyle(el);
    let line = parseFloat(style.lineHeight);
    if (Number.isNaN(line)) line = parseFloat(style.fontSize) * 1.5;
    const text = el.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
    if (text > line * 1.5) {
      problems.push(`wraps: "${label(el)}" (${Math.round(text)} px for a ${Math.round(line)} px line)`);
    }
  }
  for (const el of root.querySelectorAll("button, a.btn, [data-action], select")) {
    if (!shown(el)) continue;
    const box = el.getBoundingClientRect();
    if (box.left < -1 || box.right > window.innerWidth + 1) {
      const where = `${Math.round(box.left)}…${Math.round(box.right)} of ${window.innerWidth}`;
      problems.push(`out of reach: "${label(el)}" at x ${where}`);
    }
  }
  const measure = document.createElement("canvas").getContext("2d");
  for (const el of root.querySelectorAll("table select, select.form-select-sm")) {
    if (!shown(el) || el.selectedIndex < 0) continue;
    const style = getComputedStyle(el);
    measure.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
    const text = el.options[el.selectedIndex].text;
    const room = el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    if (measure.measureText(text).width > room + 1) {
      problems.push(`cut: select showing "${text}" (${Math.round(room)} px of room)`);
    }
  }
  return problems;
}"""
# The segment page's viewer (static/js/viewer2d.js) as the person sees it: the colour on its stage canvas at
# image pixel (x, y), through the view it reports (data-view: scale, then the image's corner on the stage).
VIEWER_PIXEL = """([x, y]) => {
  const root = document.querySelector('#viewer'), c = root.querySelector('canvas');
  const [scale, tx, ty] = root.dataset.view.split(' ').map(Number), ratio = c.width / c.clientWidth;
  const px = c.getContext('2d').getImageData(Math.floor((tx + (x + 0.5) * scale) * ratio),
                                             Math.floor((ty + (y + 0.5) * scale) * ratio), 1, 1).data;
  return [px[0], px[1], px[2]];
}"""
# Words that mean a script put a value the person cannot read on the page.
BROKEN_VALUES = r"\[object Object\]|\bundefined\b|\bNaN\b"


@contextlib.contextmanager
def shipped_card_on_default(web, organ: str = "liver"):
    """The organ's default version carries the shipped model's card and metrics (model-store/<organ>.json;
    the test organ servers' .mar has none) while the block runs; restored afterwards."""
    from sqlalchemy import select

    from gateway.core.db import session_scope
    from gateway.models import ModelVersion

    card = json.loads((Path(__file__).resolve().parents[2] / "model-store" / f"{organ}.json").read_text())
    default = select(ModelVersion).where(ModelVersion.organ == organ, ModelVersion.state == "default")
    with session_scope(web.engine) as session:
        row = session.scalars(default).one()
        row_id, before = row.id, (row.card, row.metrics)
        row.card, row.metrics = card, card["metrics"]
    try:
        yield card
    finally:
        with session_scope(web.engine) as session:
            row = session.get(ModelVersion, row_id)
            row.card, row.metrics = before


def cells_tile(folder: Path) -> Path:
    """A real MoNuSeg tile from the shared data, as a JPEG in `folder` (under the test gateway's upload
    limit)."""
    source = CELLS_TRAIN / "images" / "TCGA-18-5592-01Z-00-DX1.png"
    if not source.exists():
        pytest.fail(f"{source} is missing: the shared MoNuSeg data (../shared/data/README.md)")
    tile = folder / "tile.jpg"
    Image.open(source).convert("RGB").save(tile, quality=92)
    return tile


class Settle:
    """Waits until a page has no request in flight (as the browser reports them to Playwright: API calls,
    images, scripts) for `quiet_ms`: what Playwright's "networkidle" waits for, with a shorter quiet window
    than its fixed 500 ms (the sweep loads some 130 pages). Requests a page starts after the quiet window
    are not waited for, as with "networkidle"."""

    def __init__(self, page, quiet_ms: float = 150, timeout_ms: float = 30_000):
        self.page, self.quiet_s, self.timeout_s = page, quiet_ms / 1000, timeout_ms / 1000
        self.inflight: set = set()
        # (Playwright takes Python functions as handlers, not a set's bound built-in methods)
        page.on("request", lambda request: self.inflight.add(request))
        page.on("requestfinished", lambda request: self.inflight.discard(request))
        page.on("requestfailed", lambda request: self.inflight.discard(request))

    def __call__(self) -> None:
        start = quiet_since = time.monotonic()
        while True:
            now = time.monotonic()
            if self.inflight:
                quiet_since = now
            elif now - quiet_since >= self.quiet_s:
                return
            if now - start > self.timeout_s:
                urls = sorted(r.url for r in self.inflight)
                raise AssertionError(f"requests still in flight after {self.timeout_s:.0f} s: {urls}")
            self.page.wait_for_timeout(20)  # lets Playwright deliver the page's request events
