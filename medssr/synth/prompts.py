"""Versioned prompt files (``prompts/*.txt``, DVC deps of the stages that use them) and their rendering.

A prompt file starts with ``#`` comment lines (name, version, source, placeholders) that are never sent; the
rest is the user message. Header lines ``# key: value`` are kept in ``Prompt.meta``: the synthesis prompts use
``seed_format`` (``text`` | ``json``: how seed questions are shown), ``assistant_prefix`` (the start of the
reply, prefilled where the backend allows) and ``max_passage_chars``, so a prompt's layout travels with it. Placeholders are ``{name}`` and are filled in one pass, so braces inside seed
questions or passages are left alone and a filled value is never re-expanded.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from medssr.errors import MedssrError

PROMPT_NAMES = {"F1": "synth_f1", "F2": "synth_f2", "F3": "reasoning_f3", "category": "category"}
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class PromptError(MedssrError, ValueError):
    """A prompt file that is missing, unversioned, or filled with the wrong placeholders."""


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    template: str  # the message body (header comments removed)
    path: str
    sha256: str  # of the whole file: the prompt_hash recorded on every synthetic question
    meta: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def placeholders(self) -> set[str]:
        return set(_PLACEHOLDER.findall(self.template))

    @property
    def hash(self) -> str:
        return self.sha256[:16]

    @classmethod
    def from_text(cls, template: str, path: str = "<prompt text>") -> Prompt:
        """A prompt whose body a caller holds as text (no header): rendered and checked like a file's."""
        return cls(name=Path(path).stem, version="", template=template, path=path,
                   sha256=hashlib.sha256(template.encode("utf-8")).hexdigest())

    def render(self, **values: str) -> str:
        """Fill every placeholder; a missing or unexpected value is an error naming the file."""
        missing = self.placeholders - set(values)
        extra = set(values) - self.placeholders
        if missing or extra:
            raise PromptError(f"{self.path}: placeholders {sorted(self.placeholders)} expected; missing {sorted(missing)}, unexpected {sorted(extra)}")
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)


def default_prompt_dir() -> Path:
    """``prompts/`` in the project root (through DVC experiment copies), else next to the package."""
    if os.environ.get("MEDSSR_PROMPT_DIR"):
        return Path(os.environ["MEDSSR_PROMPT_DIR"])
    from medssr.tracking import workspace_root

    root = workspace_root() / "prompts"
    return root if root.is_dir() else Path(__file__).resolve().parents[2] / "prompts"


def load_prompt(name: str, prompt_dir: str | os.PathLike | None = None) -> Prompt:
    """Read ``<prompt_dir>/<name>.txt``; its header must carry a ``# version:`` line."""
    path = Path(prompt_dir or default_prompt_dir()) / f"{name}.txt"
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptError(f"{path}: prompt file not found") from None
    lines = raw.split("\n")
    header = []
    while lines and lines[0].startswith("#"):
        header.append(lines.pop(0))
    meta = {}
    for h in header:
        key, sep, value = h[1:].strip().partition(":")
        if sep and re.fullmatch(r"[a-z_]+", key.strip()):
            meta[key.strip()] = value.strip()
    version = meta.get("version")
    if not version:
        raise PromptError(f"{path}: header needs a '# version: N' line")
    body = "\n".join(lines).strip("\n")
    if not body.strip():
        raise PromptError(f"{path}: prompt body is empty")
    return Prompt(name=name, version=version, template=body, path=str(path), sha256=hashlib.sha256(raw.encode("utf-8")).hexdigest(),
                  meta=meta)
