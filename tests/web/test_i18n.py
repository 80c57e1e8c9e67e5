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
