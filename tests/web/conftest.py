"""Fixtures for the web pages: a real gateway (uvicorn on a free port, its own migrated SQLite database) in
front of the real object store and TorchServe organ servers (tests/fixtures), and Debian's Chromium driven
by Playwright. Playwright's own browser download does not work here (and is not needed): the launch points at
/usr/bin/chromium (`make test-deps` installs it).

    def test_x(web, browser_page):
        page = browser_page()                 # a fresh browser context (own cookies) at the gateway
        web.sign_in(page, "admin")
        web.shot(page, "admin-users")         # test-artifacts/web/admin-users.png
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.settings import Settings
from gateway.core.db import make_engine, run_migrations, session_scope
from gateway.resources.accounts import service as accounts
from tests.web.helpers import PASSWORD, serving

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
VENDOR = Path(__file__).resolve().parents[2] / "gateway" / "web" / "static" / "vendor" / "bootstrap"
# The pages warn before sending a file larger than this (set small so the test needs no huge file).
WEB_MAX_UPLOAD_BYTES = 1_000_000

# name → (role, hospital); all active. New doctors register through the page in the tests.
STAFF = {"admin": ("admin", None), "researcher": ("researcher", None), "doctor": ("doctor", "St. Anna")}


@dataclass
class WebGateway:
    base_url: str
    engine: object
    settings: Settings
    users: dict[str, str] = field(default_factory=dict)  # name → e-mail
    app: object = None  # the FastAPI app (its state: e.g. the training jobs to stop after a failed test)

    def sign_in(self, page, who: str, password: str = PASSWORD, next_path: str = "/") -> None:
        email = self.users.get(who, who)
        page.goto(f"{self.base_url}/sign-in?next={next_path}")
        page.get_by_label("E-mail address").fill(email)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/sign-in" not in url)

    def add_user(self, email: str, role: str = "doctor", hospital: str | None = "St. Anna", status="active"):
        """An account of a test's own (the shared ones carry what other tests made)."""
        with session_scope(self.engine) as session:
            accounts.create_user(
                session, email=email, password=PASSWORD, full_name=f"Test {email.split('@')[0]}", role=role,
                status=status, hospital=hospital, actor="test",
            )  # fmt: skip
        self.users[email] = email
        return email

    def shot(self, page, name: str) -> Path:
        """A full-page screenshot under test-artifacts/web/ (kept as the test's evidence)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="session")
def web(stack_settings, stack_dataplane, tmp_path_factory) -> Iterator[WebGateway]:
    """The gateway with its pages, served by uvicorn on a free port over the real stack."""
    if not VENDOR.is_dir():
        pytest.fail("Bootstrap is missing: run `make assets` (npm ci + copy into gateway/web/static/vendor)")
    from gateway.main import create_app
    from gateway.service.model_registry import seed_from_model_store

    url = f"sqlite:///{tmp_path_factory.mktemp('web-db') / 'medseg.db'}"
    run_migrations(url)
    engine = make_engine(url)
    settings = stack_settings.model_copy(
        update={"database_url": url, "max_upload_bytes": WEB_MAX_UPLOAD_BYTES, "sign_in_max_failures": 50}
    )
    app = create_app(settings, stack_dataplane)
    gateway = WebGateway("", engine, settings, app=app)
    with session_scope(engine) as session:
        for name, (role, hospital) in STAFF.items():
            user = accounts.create_user(
                session, email=f"{name}@example.org", password=PASSWORD, full_name=f"Test {name.title()}",
                role=role, status="active", hospital=hospital, actor="test",
            )  # fmt: skip
            gateway.users[name] = user.email
        seed_from_model_store(session, stack_dataplane.registry)  # as `medseg serve` does at start

    with serving(app, engine, settings) as url:
        gateway.base_url = url
        yield gateway
    engine.dispose()


@pytest.fixture(scope="session")
def chromium():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make test-deps` (installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium, web):
    """`browser_page(**context_options)` → a page in a new browser context; script dialogs fail the test."""
    contexts, dialogs = [], []

    def open_page(**options):
        options = {"viewport": {"width": 1280, "height": 900}, **options}
        context = chromium.new_context(**{"base_url": web.base_url, **options})  # another gateway's: base_url
        context.set_default_timeout(30_000)
        contexts.append(context)
        page = context.new_page()
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.on("pageerror", lambda exc: dialogs.append(f"page error: {exc}"))
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert not dialogs, f"a page ran a script dialog or threw: {dialogs}"
