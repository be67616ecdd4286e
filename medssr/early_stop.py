"""The early stop at a committed answer, in time linear in the output's length (issue #22.3).

Both sampling backends stop a sample once ``medssr.answers.has_committed_answer`` holds for its output, and run the
check each time a token brings one of ``BOUNDARY_CHARS`` (a commit needs a boundary after its letter). Checking the
whole output each time is quadratic: at 16K characters one check costs milliseconds, and a boundary comes every
few tokens. ``CommitWatch`` gives the same decisions while looking only at the text since its last check plus a
bounded tail: a commit that was not there at the last check must involve the new text, so it starts at most one
commit phrase before it, and has_committed_answer judges a commit by at most ``CONTEXT`` characters before it.

The tail, from ``medssr.answers`` (which this module reads but never changes):

* ``span``: how far before the new text a new commit can start, counted in characters that are not whitespace or
  the punctuation the cue regex repeats (``RUN_CHARS``: ``\\s+``, ``[\\s"'“”‘’[{(*$:=>-–—]*``, ``,?``), because those
  repeat without bound. The rest of a commit is ``_HARD_CUE`` (longest: 'most appropriate response' + quote +
  'should be', 32 such characters), its adverb (', most likely,' 12), ``_COMMIT_LEAD`` markup ('\\textbf{' +
  'option', 14), then a letter and ')' or one option's text, then the boundary: 61 + the longest option text.
  ``CUE_BUDGET`` (128) doubles the fixed part for patterns that grow, and the option text counts twice (a decomposed
  accent is two characters of output for one of the NFKC text the regex matches). Runs of those repeated characters
  are followed back for up to ``MAX_RUN`` (2048) more characters; a commit phrase padded with more than that (a cue,
  2048 spaces, a letter) is the one shape of output the tail does not see.
* ``CONTEXT``: the clause and line before a commit (``_clause_before`` / ``_line_before``, 300 characters), read by
  the tentative / negated / quoted tests. The tail starts right after the last newline within ``CONTEXT`` before the
  earliest new commit when there is one (a newline ends both the clause and the line, so every commit in the tail is
  judged on exactly the text the full check would use, and NFKC normalises across a newline piecewise), else
  ``CONTEXT`` characters before it.
* ``<think>`` / ``</think>`` anywhere in the output are tracked as flags: an output still inside ``<think>`` never
  commits, and after a ``</think>`` the tail is passed behind a ``</think>`` of its own, so has_committed_answer reads
  it whole even when it holds a stray ``<think>``.

The tail can see a commit the whole output does not have (a commit phrase just after the tail's start whose clause
began before it, or whose cue is part of a longer rejected commit that spans the start). So a stop is confirmed once
with the full check (``full_text``): O(length) once per sample, not per boundary. A rejected confirmation (none in the
real and synthetic outputs of tests/test_early_stop.py) makes the next checks exact full checks until the tail has
moved past that text.
"""

from __future__ import annotations

import inspect
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medssr import answers
from medssr.answers import has_committed_answer

BOUNDARY_CHARS = frozenset(".,;:!?)]}*\"'<\n")
"""A token that brings none of these cannot complete a commit, so both backends check only on tokens that do."""

CUE_BUDGET = 128
MAX_RUN = 2048
RUN_CHARS = " \t\n\r\v\f\u00a0\u2028\u2029\"'“”‘’[{(*$:=>-–—,"


def _default_window(fn: Any) -> int:
    try:
        return int(inspect.signature(fn).parameters["window"].default)
    except (KeyError, TypeError, ValueError):
        return 300


CONTEXT = max(300, _default_window(answers._clause_before), _default_window(answers._line_before))
_DROP_RUN = str.maketrans({c: None for c in RUN_CHARS})
_OPEN, _CLOSE = "<think>", "</think>"


def tail_span(options: Mapping[str, str]) -> int:
    """The ``span`` of the module docstring for one question's options (non-run characters)."""
    longest = max((len(unicodedata.normalize("NFKC", v).strip()) for v in options.values() if isinstance(v, str)), default=0)
    return CUE_BUDGET + 2 * longest


@dataclass
class WatchStats:
    checks: int = 0  # tail checks
    tail_chars: int = 0  # characters they passed to has_committed_answer, summed
    max_tail_chars: int = 0  # the most one of them passed, not counting the text since the check before it
    confirmations: int = 0  # full checks that confirmed or rejected a tail's commit
    false_alarms: int = 0  # tail commits the full check rejected
    full_checks: int = 0  # exact full checks after a false alarm


class CommitWatch:
    """``has_committed_answer`` over a growing output, each check costing O(text since the last check + tail).

    ``feed(added, check)`` appends decoded text; with ``check`` it returns what ``has_committed_answer`` would
    return on the whole output so far (plus ``pending``: trailing text that is not final yet, e.g. a partly
    decoded character, checked but not kept). ``full_text`` (the whole output, or a function returning it) confirms
    a commit the tail found; without it the tail's answer is taken as is.
    """

    def __init__(self, options: Mapping[str, str]):
        self.options = dict(options)
        self.span = tail_span(self.options)
        self._keep = self.span + MAX_RUN + CONTEXT + 16  # what the next check can need before its new text
        self._buf = ""  # the output from absolute offset _base on
        self._base = 0
        self._parts: list[str] = []  # appended since the buffer was last joined
        self._len = 0  # characters of output so far
        self._checked = 0  # _len at the last check
        self._open = self._close = False  # '<think>' / '</think>' somewhere in the output
        self._full_until = 0  # after a false alarm: exact full checks until the output is this long
        self.committed = False
        self.stats = WatchStats()

    def feed(self, added: str, check: bool, full_text: str | Callable[[], str] | None = None, pending: str = "") -> bool:
        if added:
            self._parts.append(added)
            self._len += len(added)
        if not check or self.committed:
            return self.committed
        self.committed = self._check(full_text, pending)
        return self.committed

    # -- one check ----------------------------------------------------------------------------------------------
    def _join(self) -> None:
        if not self._parts:
            return
        scan_from = max(0, len(self._buf) - len(_CLOSE))
        self._buf += "".join(self._parts)
        self._parts.clear()
        seg = self._buf[scan_from:]
        self._open = self._open or _OPEN in seg
        self._close = self._close or _CLOSE in seg

    def _tail_start(self, end: int) -> int:
        """Buffer offset from which a commit involving text after buffer offset ``end`` can start (module docstring)."""
        buf, lo, need = self._buf, end, self.span
        floor = max(0, end - self.span - MAX_RUN)
        while need > 0 and lo > floor:
            a = max(floor, lo - max(need, 32))
            need -= len(buf[a:lo].translate(_DROP_RUN))
            lo = a
        nl = buf.rfind("\n", max(0, lo - CONTEXT), lo)
        if nl >= 0:
            return nl + 1
        start = max(0, lo - CONTEXT)
        cut = buf.find(_CLOSE, max(0, start - len(_CLOSE) + 1), start + len(_CLOSE) - 1)
        return cut if 0 <= cut < start else start  # never split a '</think>'

    def _check(self, full_text: str | Callable[[], str] | None, pending: str) -> bool:
        self._join()
        end = self._checked - self._base  # new text starts here in the buffer
        self._checked = self._len
        if full_text is not None and self._len < self._full_until:
            self.stats.full_checks += 1
            return has_committed_answer(full_text() if callable(full_text) else full_text, self.options)
        start = self._tail_start(end)
        tail = self._buf[start:] + pending
        if self._open and not self._close and _CLOSE not in self._buf[-len(_CLOSE):] + pending:
            hit = False  # still inside <think> (its opening is before the tail, or in it)
        else:
            text = _CLOSE + tail if self._close else tail
            self.stats.checks += 1
            self.stats.tail_chars += len(text)
            self.stats.max_tail_chars = max(self.stats.max_tail_chars, len(text) - (len(self._buf) - end) - len(pending))
            hit = has_committed_answer(text, self.options)
        if hit and full_text is not None:
            self.stats.confirmations += 1
            hit = has_committed_answer(full_text() if callable(full_text) else full_text, self.options)
            if not hit:
                self.stats.false_alarms += 1
                self._full_until = self._len + len(tail) + CONTEXT
        drop = len(self._buf) - self._keep
        if drop > self._keep:  # trim in large steps, so appends and trims stay O(1) per character
            self._buf = self._buf[drop:]
            self._base += drop
        return hit


class IncrementalText:
    """A token stream's text, decoding only the ids since the last call and a few before them (prefix/read
    offsets, as vLLM's and TGI's detokenizers do), so text = ``tok.decode(ids, skip_special_tokens=True)`` without
    decoding the whole output each time.

    ``update(ids)`` returns ``(added, pending)``: text that is final now, and the decoded rest while it ends in a
    partial character ('\\ufffd'; kept back, but part of the output the full decode sees).
    """

    PREFIX_IDS = 6  # ids decoded again before the new ones (context for tokenizers that drop a leading space)

    def __init__(self, tok: Any):
        self.tok = tok
        self.prefix = self.read = 0

    def update(self, ids: Sequence[int]) -> tuple[str, str]:
        n = len(ids)
        if n < self.read:  # the engine took tokens back: start over
            self.prefix = self.read = 0
        before = self.tok.decode(ids[self.prefix : self.read], skip_special_tokens=True) if self.read > self.prefix else ""
        text = self.tok.decode(ids[self.prefix : n], skip_special_tokens=True)
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self.prefix, self.read = max(self.read, n - self.PREFIX_IDS), n
            return text[len(before) :], ""
        return "", text[len(before) :]
