"""Both languages are complete: the English and Chinese catalogues have the same keys, every key the templates
and page scripts name exists, and the languages an account may choose are the ones with messages."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.models import LANGUAGES
from gateway.web import i18n

WEB = Path(__file__).resolve().parents[2] / "gateway" / "web"
# t('key') in templates, M.t("key") in scripts; a key built at run time ("training.status." + s) ends in "."
KEY = re.compile(r"""\bt\(\s*['"]([a-z0-9_]+(?:\.[a-z0-9_]+)+)['"]""")


def _used_keys() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for path in [*(WEB / "templates").glob("*.html"), *(WEB / "static" / "js").glob("*.js")]:
        for key in KEY.findall(path.read_text()):
            used.setdefault(key, set()).add(path.name)
    return used


def test_english_and_chinese_have_the_same_keys():
    assert sorted(set(i18n.EN) - set(i18n.ZH)) == []
    assert sorted(set(i18n.ZH) - set(i18n.EN)) == []


def test_every_key_the_pages_use_has_a_message():
    used = _used_keys()
    assert len(used) > 100  # the pattern still finds the pages' keys
    missing = {key: sorted(files) for key, files in used.items() if key not in i18n.EN}
    assert missing == {}


def test_the_languages_an_account_may_choose_are_the_catalogues():
    assert tuple(i18n.LANGUAGES) == LANGUAGES == tuple(i18n.CATALOGUE)


# --- every error the API answers has a stable code the pages word in both languages (issue 18, item 5) -----
ROOT = WEB.parents[1]
# Where the errors a person can meet through the pages are raised: the gateway, and the shared code it runs
# on a person's upload (datasets, the organ servers' answers, the object store).
ERROR_SOURCES = [
    *sorted((ROOT / "gateway").rglob("*.py")),
    ROOT / "common" / "datasets.py",
    ROOT / "common" / "torchserve_client.py",
    ROOT / "common" / "objectstore.py",
    ROOT / "common" / "errors.py",
]


def _error_classes() -> dict[str, str | None]:
    """Every MedSegError class → its own code (None: only the base class's generic one, e.g. 'not_found')."""
    import ast

    own: dict[str, str | None] = {}
    bases: dict[str, list[str]] = {}
    for path in ERROR_SOURCES + [ROOT / "gateway" / "resources" / "accounts" / "service.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = [b.id for b in node.bases if isinstance(b, ast.Name)]
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant | ast.Tuple):
                        names = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
                        names += [e.id for t in stmt.targets if isinstance(t, ast.Tuple) for e in t.elts]
                        if "code" in names:
                            value = stmt.value if isinstance(stmt.value, ast.Constant) else stmt.value.elts[0]
                            own[node.name] = value.value
    errors = {"MedSegError"}
    while True:
        more = {name for name, b in bases.items() if set(b) & errors} - errors
        if not more:
            break
        errors |= more
    generic = {"MedSegError", "InvalidInput", "Unauthenticated", "Forbidden", "NotFound", "Conflict"}
    generic |= {"PayloadTooLarge", "UnsupportedMediaType", "TooManyRequests", "ServiceUnavailable"}
    return {name: (None if name in generic else own.get(name)) for name in errors} | {
        name: own.get(name) for name in generic
    }


def _raised_codes() -> tuple[set[str], list[str]]:
    """(every code the error sources name, every place that makes an error without a code of its own)."""
    import ast

    classes = _error_classes()
    specific = {"MedSegError", "InvalidInput", "Unauthenticated", "Forbidden", "NotFound", "Conflict"}
    specific |= {"PayloadTooLarge", "UnsupportedMediaType", "TooManyRequests", "ServiceUnavailable"}
    codes = {code for code in classes.values() if code}
    uncoded = []
    for path in ERROR_SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes
            ):
                continue
            code = next((k.value for k in node.keywords if k.arg == "code"), None)
            if isinstance(code, ast.Constant):
                codes.add(code.value)
            elif code is None and node.func.id in specific:
                uncoded.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}")
    return codes, uncoded


def test_every_error_a_person_can_meet_has_a_code_of_its_own():
    """A generic code ('invalid_input', 'not_found') says too little for a page to word the error itself."""
    assert _raised_codes()[1] == []


def test_every_error_code_is_worded_in_both_languages():
    codes, _ = _raised_codes()
    assert len(codes) > 60  # the scan still finds the codes
    # the HTTP edge's own: unknown routes and methods, bad schemas, unexpected failures (gateway/main.py)
    codes |= {"not_found", "method_not_allowed", "invalid_input", "internal", "payload_too_large"}
    for catalogue in (i18n.EN, i18n.ZH):
        assert sorted(c for c in codes if f"err.{c}" not in catalogue) == []


def test_the_studies_messages_add_keys_and_replace_none():
    """gateway/web/i18n_studies.py only adds to the catalogue: a key of the same name there would silently
    replace another page's words (e.g. the 2-D viewer's "viewer.zoom")."""
    import ast

    from gateway.web import i18n_studies

    written = {
        node.target.id: set(ast.literal_eval(node.value))
        for node in ast.parse((WEB / "i18n.py").read_text()).body
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) in ("EN", "ZH")
    }
    assert sorted(written["EN"] & set(i18n_studies.EN)) == []
    assert sorted(written["ZH"] & set(i18n_studies.ZH)) == []
