"""Responses as the annotator sees them: escaped text with a safe subset of Markdown.

Model output is untrusted. It is rendered by markdown-it-py (CommonMark) with raw HTML off,
so ``<script>`` or ``<img onerror=...>`` come out as visible text, and with links, images,
autolinks and link references off, so no ``javascript:`` (or any) URL becomes clickable and
nothing is fetched. What stays: paragraphs, line breaks, emphasis, inline code, fenced and
indented code blocks, lists, block quotes, headings and rules. The page's Content-Security-Policy
(no inline script) is the second wall behind this one.
"""

from __future__ import annotations

from functools import lru_cache

from markdown_it import MarkdownIt
from markupsafe import Markup

DISABLED_RULES = ["html_block", "html_inline", "link", "image", "autolink", "reference"]


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False}).disable(DISABLED_RULES)


def render_markdown(text: str) -> Markup:
    """HTML for ``text``: every character of the input is escaped or turned into one of the
    allowed Markdown elements."""
    return Markup(_parser().render(text))
