"""Server-rendered pages. Pages only read; every change goes through the JSON API (/api/v1) from the
page's script with the session's CSRF token, so the API stays the one place that checks and writes.

A signed-out visitor of a page that needs a person is redirected to /sign-in?next=<page>; a person whose
role does not fit gets the 403 page (never the API's JSON).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, unquote, urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.errors import Unauthenticated
from common.settings import get_settings
from gateway.api.deps import SessionDep, SettingsDep
from gateway.api.log_redaction import redact_patient_ids
from gateway.core.db import get_db
from gateway.models import Dataset, Evaluation, ReferenceSet, Segmentation, User
from gateway.resources.accounts.service import resolve_session
from gateway.resources.training import service as training_service
from gateway.security import KNOWN_SCOPES
from gateway.web import i18n

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
# Autoescape everything: names, notes and file names typed by people are shown on these pages.
templates = Jinja2Templates(env=Environment(loader=FileSystemLoader(WEB_DIR / "templates"), autoescape=True))

LANG_COOKIE = "medseg_lang"
LANG_COOKIE_MAX_AGE = 365 * 24 * 3600
DOCTOR_SIDE = ("doctor", "researcher", "admin")
RESEARCHER_SIDE = ("researcher", "admin")
ADMIN_SIDE = ("admin",)
# (path, message key, roles); the navigation bar shows the entries the viewer's role may open.
NAV = [
    ("/segment", "nav.segment", DOCTOR_SIDE),
    ("/studies", "nav.studies", DOCTOR_SIDE),
    ("/history", "nav.history", DOCTOR_SIDE),
    ("/datasets", "nav.datasets", DOCTOR_SIDE),
    ("/model-test", "nav.model_test", DOCTOR_SIDE),
    ("/feedback", "nav.feedback", DOCTOR_SIDE),
    ("/training", "nav.training", RESEARCHER_SIDE),
    ("/models", "nav.models", RESEARCHER_SIDE),
]
ADMIN_NAV = [
    ("/admin/users", "nav.users", ADMIN_SIDE),
    ("/admin/api-keys", "nav.api_keys", ADMIN_SIDE),
    ("/admin/audit", "nav.audit", ADMIN_SIDE),
]


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a page: a signed-in person (with the session's CSRF token) or nobody."""

    user: User | None
    csrf_token: str | None
    lang: str

    @property
    def role(self) -> str | None:
        return self.user.role if self.user else None


class SignInRequired(Exception):
    def __init__(self, next_path: str):
        self.next_path = next_path


class PageForbidden(Exception):
    def __init__(self, viewer: Viewer, roles: tuple[str, ...]):
        self.viewer = viewer
        self.roles = roles


def get_viewer(request: Request, session: SessionDep, settings: SettingsDep) -> Viewer:
    user, csrf = None, None
    token = request.cookies.get(settings.session_cookie_name)
    if token:
        try:
            user_session, user = resolve_session(session, token)
            csrf = user_session.csrf_token
        except Unauthenticated:
            user = None
    return Viewer(user=user, csrf_token=csrf, lang=language_for(request, user))


def language_for(request: Request, user: User | None) -> str:
    """The account's language (kept in the database: the same on every browser), else this browser's cookie
    (signed-out visitors), else the browser's preference."""
    return i18n.pick_language(
        user.language if user else None,
        request.cookies.get(LANG_COOKIE),
        accept_language=request.headers.get("accept-language"),
    )


ViewerDep = Annotated[Viewer, Depends(get_viewer)]


def page_for(*roles: str):
    """A dependency admitting signed-in people with one of `roles` (redirect or 403 page otherwise)."""

    def viewer_with_role(request: Request, viewer: ViewerDep) -> Viewer:
        if viewer.user is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise SignInRequired(target)
        if viewer.role not in roles:
            raise PageForbidden(viewer, roles)
        return viewer

    return Depends(viewer_with_role)


DoctorSide = Annotated[Viewer, page_for(*DOCTOR_SIDE)]
ResearcherSide = Annotated[Viewer, page_for(*RESEARCHER_SIDE)]
AdminSide = Annotated[Viewer, page_for(*ADMIN_SIDE)]
SignedInPage = Annotated[Viewer, page_for(*DOCTOR_SIDE)]


_UNSAFE_IN_NEXT = re.compile(r"[\x00-\x20\x7f\\]")  # controls, whitespace, backslash


def safe_next(target: str | None, default: str = "/") -> str:
    """Only paths on this site: '//evil.example' or 'https://…' would make sign-in an open redirect.

    Judged as a browser reads it: browsers drop tabs and newlines from a URL and treat '\\' as '/', so
    '/<TAB>/evil.example' and '/\\evil.example' are '//evil.example' to them. Any control character,
    whitespace or backslash refuses the target (also once percent-decoded, in case something decodes it
    again), and what is left must be a path without scheme or host.
    """
    if not target:
        return default
    for form in (target, unquote(target)):
        if _UNSAFE_IN_NEXT.search(form) or not form.startswith("/") or form.startswith("//"):
            return default
        parts = urlsplit(form)
        if parts.scheme or parts.netloc:
            return default
    return target


def home_for(viewer: Viewer) -> str:
    if viewer.role == "admin":
        return "/admin/users"
    if viewer.role == "researcher":
        return "/models"
    return "/segment"


def render(request: Request, viewer: Viewer, name: str, status_code: int = 200, **context) -> HTMLResponse:
    lang = viewer.lang

    def t(key: str, **params) -> str:
        return i18n.translate(lang, key, **params)

    nav_items = [(p, k) for p, k, roles in NAV if viewer.role in roles]
    # every organ the gateway serves has a name in the pages' catalogue (its spec's display name when the
    # catalogue has no word for it), so page scripts name organs as the templates do
    organ_names = {}
    for organ in _organs(request):
        organ_names[f"organ.{organ.name}"] = i18n.organ_name(
            lang, organ.name, organ.spec.display_name, organ.spec.translations
        )
        organ_names.update(i18n.label_names(lang, organ.spec.translations))
    admin_items = [(p, k) for p, k, roles in ADMIN_NAV if viewer.role in roles]
    settings = request.app.state.web_settings
    response = templates.TemplateResponse(
        request,
        name,
        {
            "viewer": viewer,
            "t": t,
            "lang": lang,
            "languages": i18n.LANGUAGES,
            "messages": {**organ_names, **i18n.messages(lang)},
            "nav_items": nav_items,
            "admin_items": admin_items,
            "current_path": request.url.path,
            "current_url": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            "max_upload_bytes": settings.max_upload_bytes,
            "max_dataset_upload_bytes": settings.max_dataset_upload_bytes,
            **context,
        },
        status_code=status_code,
    )
    # CSP, nosniff, frame and referrer policies: gateway/api/security_headers.py, on every response
    response.headers["Cache-Control"] = "no-store"  # pages show patients' data and a CSRF token
    return response


def organ_choices(request: Request) -> list:
    """Every organ the gateway serves (gateway.service.organs.Organ), from its registry (no network call)."""
    return request.app.state.dataplane.registry.all()


def _organs(request: Request) -> list:
    """The organs for every page's catalogue, error pages' too (none when the app has no data plane yet)."""
    dataplane = getattr(request.app.state, "dataplane", None)
    return dataplane.registry.all() if dataplane else []


FALLBACK_ORGAN = "liver"
# What a person's own data is: (the owner column, the organ column) of each kind of row they make.
OWN_DATA = (
    (Segmentation.user_id, Segmentation.organ),
    (Dataset.uploaded_by_user_id, Dataset.organ),
    (Evaluation.user_id, Evaluation.organ),
)


def default_organ(session: Session, user: User, organs: list[str]) -> str | None:
    """The organ a page starts on (until this browser remembers a choice): the first organ, in the pages'
    order, the person has data for (segmentations, datasets, tests); else liver; else the first."""
    used: set[str] = set()
    for owner, organ in OWN_DATA:
        used.update(session.scalars(select(organ).where(owner == user.id).distinct()))
    for name in organs:
        if name in used:
            return name
    return FALLBACK_ORGAN if FALLBACK_ORGAN in organs else next(iter(organs), None)


def organ_context(request: Request, viewer: Viewer, session: Session, *, images_only: bool = False) -> dict:
    """The organ select's choices and the organ it starts on; what the viewer needs of each organ (its
    modality: histology opens in deep zoom; its label: nuclei are counted; its labels and dimensions;
    `expected_s`: what its last segmentations here took, for the progress bar, None before the first).
    `images_only`: only the organs that segment 2-D images (a 3-D organ takes studies, /studies)."""
    dataplane = request.app.state.dataplane
    registry = dataplane.registry
    organs = [
        (o.name, i18n.organ_name(viewer.lang, o.name, o.spec.display_name, o.spec.translations))
        for o in organ_choices(request)
        if not (images_only and o.spec.volumetric)
    ]
    kinds = {
        o.name: {
            "modality": o.spec.modality,
            "label": o.spec.label,
            "labels": list(o.spec.labels),
            "dimensions": o.spec.dimensions,
            "expected_s": dataplane.expected_seconds(o.name),
        }
        for o in registry.all()
    }
    return {
        "organs": organs,
        "default_organ": default_organ(session, viewer.user, [n for n, _ in organs]),
        "organ_kinds": kinds,
    }


router = APIRouter(include_in_schema=False)


@router.get("/")
def index(viewer: ViewerDep) -> Response:
    if viewer.user is None:
        return RedirectResponse("/sign-in", status_code=303)
    return RedirectResponse(home_for(viewer), status_code=303)


@router.get("/sign-in")
def sign_in_page(request: Request, viewer: ViewerDep, next: Annotated[str | None, Query()] = None):
    return render(request, viewer, "sign_in.html", next_path=safe_next(next, ""))


@router.get("/register")
def register_page(request: Request, viewer: ViewerDep):
    return render(request, viewer, "register.html")


@router.get("/set-language")
def set_language(
    lang: Annotated[str, Query(max_length=8)],
    next: Annotated[str | None, Query(max_length=2000)] = None,
) -> Response:
    """Switch the pages' language in this browser (a cookie, for signed-out pages). For a signed-in person the
    page's script first saves it to the account (PATCH /api/v1/users/me with the CSRF token): a GET link
    must not write to the database."""
    response = RedirectResponse(safe_next(next), status_code=303)
    if lang in i18n.LANGUAGES:
        response.set_cookie(LANG_COOKIE, lang, max_age=LANG_COOKIE_MAX_AGE, samesite="lax", path="/")
    return response


@router.get("/profile")
def profile_page(request: Request, viewer: SignedInPage):
    return render(request, viewer, "profile.html")


def _doctor_page(template: str, images_only: bool = False) -> Callable[..., Response]:
    """A doctor-side page: its template with the organ choices (`images_only`: the 2-D organs)."""

    def page(request: Request, viewer: DoctorSide, session: SessionDep):
        return render(
            request, viewer, template, **organ_context(request, viewer, session, images_only=images_only)
        )

    return page


for _path, _name in (
    ("/datasets", "datasets"),
    ("/segment", "segment"),
    ("/history", "history"),
    ("/model-test", "model_test"),
    ("/feedback", "feedback"),
):
    # the segment page sends 2-D images: a 3-D organ is offered on /studies
    page = _doctor_page(f"{_name}.html", images_only=_name == "segment")
    router.add_api_route(_path, page, methods=["GET"], name=f"{_name}_page")


@router.get("/training")
def training_page(request: Request, viewer: ResearcherSide, session: SessionDep):
    return render(
        request,
        viewer,
        "training.html",
        **organ_context(request, viewer, session),
        architectures=training_service.architectures().architectures,
    )


@router.get("/models")
def models_page(request: Request, viewer: ResearcherSide, session: SessionDep):
    max_dice_drop = request.app.state.web_settings.promotion_max_dice_drop  # shown beside the comparison
    # each organ's frozen reference set, or none: the page shows it without asking the API for a 404
    reference_sets = {
        row.organ: {"dataset_id": row.dataset_id, "set_by": row.set_by, "set_at": row.set_at.isoformat()}
        for row in session.scalars(select(ReferenceSet))
    }
    return render(
        request,
        viewer,
        "models.html",
        **organ_context(request, viewer, session),
        max_dice_drop=max_dice_drop,
        reference_sets=reference_sets,
    )


@router.get("/admin/users")
def admin_users_page(request: Request, viewer: AdminSide):
    return render(request, viewer, "admin_users.html")


@router.get("/admin/api-keys")
def admin_keys_page(request: Request, viewer: AdminSide):
    return render(request, viewer, "admin_keys.html", scopes=KNOWN_SCOPES)


@router.get("/admin/audit")
def admin_audit_page(request: Request, viewer: AdminSide):
    return render(request, viewer, "admin_audit.html")


def sign_in_redirect(_: Request, exc: SignInRequired) -> Response:
    return RedirectResponse(f"/sign-in?next={quote(exc.next_path, safe='/')}", status_code=303)


def forbidden_page(request: Request, exc: PageForbidden) -> Response:
    viewer = exc.viewer
    roles = " / ".join(i18n.translate(viewer.lang, f"role.{r}") for r in exc.roles)
    role = i18n.translate(viewer.lang, f"role.{viewer.role}")
    return render(
        request, viewer, "error.html", status_code=403, code=403, key="error.403", roles=roles, role=role
    )


# Paths whose errors keep the API's JSON shape: the API itself, the probes and the API's documentation.
JSON_PATHS = ("/api/", "/healthz", "/readyz", "/openapi.json", "/docs", "/redoc")


def is_page_request(request: Request) -> bool:
    """True when an error on this path should be an HTML page (everything but JSON_PATHS)."""
    path = request.url.path
    return not any(path == p.rstrip("/") or path.startswith(p) for p in JSON_PATHS)


def viewer_outside_routes(request: Request) -> Viewer:
    """The viewer for an error page, where no route (so no dependency) ran: resolved through the app's own
    database dependency when it answers, else signed out. An error page must never fail itself."""
    overrides = request.app.dependency_overrides
    sessions = overrides.get(get_db, get_db)()
    try:
        return get_viewer(request, next(sessions), overrides.get(get_settings, get_settings)())
    except Exception:  # the database may be why this request failed
        return Viewer(user=None, csrf_token=None, lang=language_for(request, None))
    finally:
        sessions.close()


def error_page(request: Request, status_code: int, headers: dict[str, str] | None = None) -> Response:
    """The styled error page in the base layout for `status_code` (a general text: never the exception's own
    message, which may name internals, and never a stack trace), carrying the error's own `headers` (e.g.
    405's `Allow`) as the API's JSON answer does."""
    key = f"error.{status_code}"
    if f"{key}.title" not in i18n.EN:
        key = "error.4xx" if status_code < 500 else "error.500"
    try:
        viewer = viewer_outside_routes(request)
        page = render(
            request, viewer, "error.html", status_code=status_code, code=status_code, key=key,
            path=request.url.path,
        )  # fmt: skip
    except Exception:
        logger.exception(
            "the %s error page for %s failed to render", status_code, redact_patient_ids(request.url.path)
        )
        page = HTMLResponse(f"<!doctype html><title>{status_code}</title><p>{status_code}</p>", status_code)
    page.headers.update(headers or {})
    return page
