"""MkDocs hooks of the ivy site (mkdocs.yml, ``hooks``).

* ``<!-- include: PATH -->`` on a line of its own puts the file PATH (relative to the
  repository root) there, with its links to repository files rewritten to pages of the site:
  PROTOCOL.md and CHANGELOG.md stay at the root, where other files link to them, and appear in
  the site through the pages that include them. A relative link that has no page on the site
  stops the build.
* Docstrings are written for Sphinx-like roles (``:class:`Ivy```); the roles are dropped from
  the rendered API reference, keeping the name as code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = re.compile(r"^<!-- include: (\S+) -->$", re.MULTILINE)
LINK = re.compile(r"\]\(([^)\s]+)\)")
#: repository paths (as included files link to them) -> site pages, relative to docs/
PAGES = {
    "ivy/schemas": "interop/schemas.md",
    "ivy/schemas/message-v1.json": "interop/schemas.md#message-v1json",
    "ivy/schemas/message-legacy.json": "interop/schemas.md#message-legacyjson",
    "ivy/schemas/notification-v1.json": "interop/schemas.md#notification-v1json",
    "PROTOCOL.md": "interop/protocol.md",
    "README.md": "index.md",
    "docs/benchmarks.md": "benchmarks.md",
    "docs/reliability.md": "reliability.md",
    "docs/security.md": "security.md",
}
ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj):(<code>)")


def _relative(target: str, page: str) -> str:
    """``target`` (relative to docs/) as seen from the page at ``page`` (relative to docs/)."""
    depth = page.count("/")
    return "../" * depth + target


def _rewrite(text: str, source: str, page: str) -> str:
    def link(match: re.Match[str]) -> str:
        url = match.group(1)
        if re.match(r"^[a-z]+:|^#", url):
            return match.group(0)
        path, _, anchor = url.partition("#")
        target = PAGES.get(path.rstrip("/"))
        if target is None:
            raise ValueError(f"{source} links to {url!r}, which has no page on the site: "
                             "add it to PAGES in docs/hooks.py")
        if anchor:
            target = f"{target.partition('#')[0]}#{anchor}"
        return f"]({_relative(target, page)})"

    return LINK.sub(link, text)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    def include(match: re.Match[str]) -> str:
        source = match.group(1)
        text = (ROOT / source).read_text(encoding="utf-8")
        return _rewrite(text, source, page.file.src_uri)

    return INCLUDE.sub(include, markdown)


def on_page_content(html: str, **_: Any) -> str:
    return ROLE.sub(r"\1", html)
