"""Every message a console shows is translated in its French catalogue."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.web.catalogues import extract_msgids, untranslated
from gateway.web.i18n import CatalogueSource, load_translations

ROOT = Path(__file__).resolve().parents[1] / "gateway"

# (folder of the code and templates, its catalogue): each console adds its own line.
CATALOGUES = [
    (ROOT / "web", CatalogueSource(ROOT / "web" / "locale", "web")),
    (
        ROOT / "academy" / "console",
        CatalogueSource(ROOT / "academy" / "console" / "locale", "academy"),
    ),
    (
        ROOT / "school_console",
        CatalogueSource(ROOT / "school_console" / "locale", "school_console"),
    ),
]


@pytest.mark.parametrize(("folder", "source"), CATALOGUES, ids=lambda v: str(v)[-30:])
class TestCatalogues:
    """The French catalogue covers every msgid; every catalogue loads."""

    def test_every_message_is_translated_in_french(
        self, folder: Path, source: CatalogueSource
    ) -> None:
        assert extract_msgids(folder), "the extraction found nothing: the test would be empty"
        missing = untranslated(folder, source.po_path("fr"))
        assert not missing, "untranslated in French (python -m gateway.web.catalogues):\n" + (
            "\n".join(f"  {msgid!r} at {where[0]}" for msgid, where in missing.items())
        )

    def test_catalogues_load_and_french_differs_from_english(
        self, folder: Path, source: CatalogueSource
    ) -> None:
        translations = load_translations([source])
        some = sorted(extract_msgids(folder))[0]
        assert translations["en"].gettext(some) == some
        assert translations["fr"].gettext(some) != some


def test_an_untranslated_message_is_caught(tmp_path: Path) -> None:
    """The check itself can fail: a template with a new string and a stale catalogue."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "page.html").write_text("<p>{{ _('Brand new sentence') }}</p>")
    (tmp_path / "code.py").write_text("from gateway.web.i18n import N_\nX = N_('Another one')\n")
    po = tmp_path / "fr.po"
    po.write_text('msgid "Another one"\nmsgstr "Encore une"\n')
    assert list(untranslated(tmp_path, po)) == ["Brand new sentence"]
