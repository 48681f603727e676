"""Records of the data model (DESIGN §1): prompts, responses, and their content ids.

A preference travels as :class:`activepref.core.store.PreferenceRecord`; scores live in the
run store, keyed by response.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

ASPECTS = ("helpfulness", "truthfulness", "honesty", "instruction_following")


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    messages: tuple[dict[str, str], ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def conversation(self) -> list[dict[str, str]]:
        """The prompt as chat messages ending with the user turn."""
        return [dict(m) for m in self.messages] if self.messages else [{"role": "user", "content": self.text}]


@dataclass(frozen=True)
class Response:
    id: str
    prompt_id: str
    model: str
    text: str
    principle: str | None = None
    system_prompt: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def content_id(*parts: str) -> str:
    """Stable id from content (DESIGN §1: ids are given or a content hash)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:16]
