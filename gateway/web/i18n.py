"""Gettext catalogues for the consoles, read from their ``.po`` files at start-up.

French first: French is the default language, English is available. Message
ids are the English text; each console keeps its catalogue in
``<its folder>/locale/<lang>/LC_MESSAGES/<domain>.po`` beside the stack's own
(``gateway/web/locale/.../web.po``), and a console's catalogue falls back to
the stack's. The ``.po`` files are compiled in memory when the process starts
(Babel reads them), so nothing on the box needs a build step or the internet.

Strings in Python code that a page shows are marked with :func:`N_` (a no-op
that the extraction in ``tests/test_web_i18n.py`` finds) and translated when
the page is rendered.
"""

from __future__ import annotations

import gettext
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import PoFileError, read_po

from gateway.errors import ConfigError

DEFAULT_LANGUAGE = "fr"
LANGUAGES: tuple[str, ...] = ("fr", "en")
LANGUAGE_NAMES = {"fr": "Français", "en": "English"}
WEB_LOCALE_DIR = Path(__file__).parent / "locale"
WEB_DOMAIN = "web"


def N_(msgid: str) -> str:
    """Mark ``msgid`` for extraction; it is translated where it is shown."""
    return msgid


@dataclass(frozen=True)
class CatalogueSource:
    """Where one domain's catalogues live: ``<locale_dir>/<lang>/LC_MESSAGES/<domain>.po``."""

    locale_dir: Path
    domain: str

    def po_path(self, language: str) -> Path:
        return self.locale_dir / language / "LC_MESSAGES" / f"{self.domain}.po"


def load_po(path: Path) -> gettext.GNUTranslations:
    """One ``.po`` file as translations (compiled in memory); ConfigError names a bad file."""
    try:
        with path.open("rb") as source:
            catalog = read_po(source, locale=None, abort_invalid=True)
    except (OSError, PoFileError) as exc:
        raise ConfigError(f"cannot read the message catalogue {path}: {exc}") from exc
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def load_translations(
    sources: Sequence[CatalogueSource], languages: Iterable[str] = LANGUAGES
) -> dict[str, gettext.NullTranslations]:
    """Per language, the first source's catalogue falling back to the next ones."""
    result: dict[str, gettext.NullTranslations] = {}
    for language in languages:
        chain: gettext.NullTranslations | None = None
        for source in sources:
            path = source.po_path(language)
            if not path.exists():
                continue
            translations = load_po(path)
            if chain is None:
                chain = translations
            else:
                chain.add_fallback(translations)
        result[language] = chain if chain is not None else gettext.NullTranslations()
    return result


def parse_accept_language(header: str) -> list[str]:
    """Primary language tags of an Accept-Language header, best first (q=0 dropped)."""
    weighted: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        tag = tag.strip().lower()
        if not tag or tag == "*":
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            weighted.append((-quality, index, tag.split("-")[0]))
    return [tag for _, _, tag in sorted(weighted)]


def choose_language(
    query: str | None,
    cookie: str | None,
    accept_language: str,
    available: Sequence[str] = LANGUAGES,
    default: str = DEFAULT_LANGUAGE,
) -> str:
    """The page's language: ``?lang=``, else the ``lang`` cookie, else Accept-Language,
    else French."""
    for explicit in (query, cookie):
        if explicit is not None and explicit in available:
            return explicit
    for tag in parse_accept_language(accept_language):
        if tag in available:
            return tag
    return default
