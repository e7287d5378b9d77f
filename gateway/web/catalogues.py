"""Keep the gettext catalogues in step with the code and templates.

``extract_msgids(folder)`` finds every message id a console uses: in its
templates (``_()``, ``gettext()``, ``{% trans %}``) and in its Python code
(``N_()`` and ``_()``). ``untranslated`` lists those a catalogue lacks (the
test that keeps the French catalogue complete uses it), and ``update`` adds
the missing ones to a ``.po`` file with an empty translation, keeping every
translation already there::

    python -m gateway.web.catalogues gateway/web web
    python -m gateway.web.catalogues gateway/school_console school_console
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

from gateway.web.i18n import LANGUAGES, CatalogueSource

METHOD_MAP = [
    ("**/locale/**", "ignore"),
    ("**/templates/**.html", "jinja2.ext:babel_extract"),
    ("**.py", "python"),
]
KEYWORDS: dict[str, tuple[int, ...] | None] = {
    "_": None,
    "gettext": None,
    "ngettext": (1, 2),
    "N_": None,
}


def extract_msgids(folder: Path) -> dict[str, list[str]]:
    """Every message id used under ``folder`` -> where (``file:line``)."""
    found: dict[str, list[str]] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
        str(folder),
        method_map=METHOD_MAP,
        keywords=KEYWORDS,
        options_map={"**/templates/**.html": {"trimmed": "true"}},
    ):
        for msgid in message if isinstance(message, tuple) else (message,):
            if msgid:
                found.setdefault(msgid, []).append(f"{filename}:{lineno}")
    return found


def read_catalog(path: Path) -> Catalog:
    with path.open("rb") as source:
        return read_po(source)


def untranslated(folder: Path, po_path: Path) -> dict[str, list[str]]:
    """Message ids used under ``folder`` with no (or a fuzzy) translation in ``po_path``."""
    catalog = read_catalog(po_path)
    missing: dict[str, list[str]] = {}
    for msgid, where in extract_msgids(folder).items():
        message = catalog.get(msgid)
        if message is None or message.fuzzy or not message.string:
            missing[msgid] = where
    return missing


def update(folder: Path, source: CatalogueSource, languages: Sequence[str] = LANGUAGES) -> None:
    """Add the message ids used under ``folder`` that each catalogue lacks."""
    used = extract_msgids(folder)
    for language in languages:
        path = source.po_path(language)
        if path.exists():
            catalog = read_catalog(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            catalog = Catalog(locale=language, domain=source.domain, project="school-gateway")
            catalog.fuzzy = False
        for msgid, where in sorted(used.items()):
            if msgid not in catalog:
                catalog.add(msgid, "", locations=[(w.rsplit(":", 1)[0], 0) for w in where[:1]])
        with path.open("wb") as out:
            write_po(out, catalog, width=100, omit_header=False, include_lineno=False)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m gateway.web.catalogues FOLDER DOMAIN", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    update(folder, CatalogueSource(folder / "locale", argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
