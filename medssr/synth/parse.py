"""Parse a generator's reply into a question and validate it; every rejection has a stable reason name.

Two layouts are accepted: the JSON object our prompts ask for (``QUESTION_SCHEMA``; also inside a code
fence or after a short preamble) and, for backends without structured output, plain text::

    Question: <stem>
    A. <option>
    B. <option>
    ...
    Answer: <letter>

Rules (each a reason in ``REASONS``): stem 40-2000 characters; 4 or 5 options A-D(E), each non-empty, at
most 300 characters and distinct after normalisation (case, punctuation, spacing); the generator's answer
key present and among the options; no reference to the prompt ("the passage above", "according to the
context", "seed question"); no leftover template placeholders ("{rare_disease}", "[LETTER]", "first option");
no options inside the stem; not degenerate (at least 3 distinct words of 3+ letters, no 6-word phrase repeated
4 or more times: the loops small models fall into; 2 of 9,335 real benchmark/MedMCQA stems trip it). "All of the above" is always rejected, and so are options built from other
options' letters ("Both A and B"): they hinge on the letters, which voting and evaluation may shuffle, and they
reward test-taking tricks rather than medical reasoning. "None of the above" is accepted only as the last
option and only as a distractor (not the generator's key): a question whose key is "none" asserts that every
listed option is wrong, a claim majority voting cannot confirm (a vote for "none" is indistinguishable from a
model that found no option it liked), while as a distractor it is an ordinary wrong option.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

from medssr.records import LETTERS

MIN_STEM, MAX_STEM, MAX_OPTION = 40, 2000, 300
MIN_OPTIONS, MAX_OPTIONS = 4, 5
TRUNCATED_FINISH = ("length", "max_tokens")  # OpenAI/vLLM/local, Anthropic

REASONS = (
    "empty", "truncated", "bad_json", "no_question_format", "missing_answer", "bad_answer", "option_count",
    "empty_option", "duplicate_options", "stem_too_short", "stem_too_long", "option_too_long", "options_in_stem",
    "not_self_contained", "placeholder", "all_of_the_above", "none_of_the_above", "combination_option", "degenerate",
)

_OPTION_PROPS = {k: {"type": "string"} for k in "ABCD"} | {"E": {"type": ["string", "null"]}}
# Structured-output schema. OpenAI's strict mode needs every property listed in "required", so the optional
# fifth option is a required-but-nullable E: null (or absent, for backends that allow it) means four options.
QUESTION_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "question": {"type": "string"},
        "options": {"type": "object", "properties": _OPTION_PROPS, "required": list("ABCDE"), "additionalProperties": False},
        "answer": {"type": "string", "enum": list("ABCDE")},
    },
    "required": ["question", "options", "answer"],
    "additionalProperties": False,
}


class InvalidQuestion(ValueError):
    """A reply that is not an acceptable question; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class ParsedQuestion:
    question: str
    options: dict[str, str]
    answer: str  # the generator's own key; training labels come from voting
    layout: str  # 'json' | 'text'


# -- parsing -------------------------------------------------------------------------------------------
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```\s*$", re.S)
_OPT_LINE = re.compile(r"^\s*(?:\*\*)?\(?([A-J])(?:[.):]|\)\.)(?:\*\*)?\s+(.*\S)?\s*$")
_ANSWER_LINE = re.compile(
    r"^\s*(?:\*\*)?(?:(?:correct|final)\s+)?answer(?:\s+key)?\s*(?:\*\*)?\s*[:\-]\s*(?:\*\*)?\s*\(?([A-J])\b"
    r"|^\s*the\s+(?:correct\s+)?answer\s+is\s*:?\s*\(?([A-J])\b", re.I)
_QUESTION_LABEL = re.compile(r"^\s*(?:\*\*)?\s*(?:question|stem)\s*(?:\d+\s*)?[:.]\s*(?:\*\*)?\s*", re.I)
_ANSWER_VALUE = re.compile(r"^\s*\(?([A-Ja-j])\)?(?:[.):]|\s|$)")


def parse_reply(text: str) -> ParsedQuestion:
    """Parse a reply in either layout (no quality checks); raises InvalidQuestion."""
    t = (text or "").strip()
    if not t:
        raise InvalidQuestion("empty")
    m = _FENCE.match(t)
    if m:
        t = m.group(1).strip()
    if "{" in t:
        obj, err = _first_json_object(t)
        if obj is not None:
            return _from_json(obj)
        if t.startswith("{"):
            raise InvalidQuestion("bad_json", err)
    return _from_text(t)


def _first_json_object(t: str) -> tuple[dict | None, str]:
    dec = json.JSONDecoder()
    err = "no JSON object"
    for m in re.finditer(r"\{", t):
        try:
            obj, _ = dec.raw_decode(t, m.start())
        except json.JSONDecodeError as e:
            err = f"{e.msg} at column {e.colno}" if m.start() == 0 or err == "no JSON object" else err
            continue
        if isinstance(obj, dict) and "question" in obj:
            return obj, ""
    return None, err


def _from_json(obj: dict) -> ParsedQuestion:
    stem = obj.get("question")
    if not isinstance(stem, str):
        raise InvalidQuestion("no_question_format", "JSON 'question' is not a string")
    if normalize_option(stem) in _FORMAT_EXAMPLE:
        raise InvalidQuestion("placeholder", "the format example was copied instead of a question")
    raw = obj.get("options")
    if isinstance(raw, list):
        raw = {LETTERS[i]: v for i, v in enumerate(raw[: len(LETTERS)])}
    if not isinstance(raw, dict):
        raise InvalidQuestion("option_count", "JSON 'options' is not an object")
    options: dict[str, str] = {}
    for k, v in raw.items():
        key = str(k).strip().strip(".)(").upper()
        if v is None:  # the nullable fifth option of the schema
            continue
        if len(key) != 1 or key not in LETTERS:
            raise InvalidQuestion("option_count", f"option key {k!r} is not a letter")
        if not isinstance(v, str):
            raise InvalidQuestion("empty_option", f"option {key} is not a string")
        options[key] = v
    options = {k: options[k] for k in sorted(options)}
    ans = obj.get("answer")
    if ans is None or (isinstance(ans, str) and not ans.strip()):
        raise InvalidQuestion("missing_answer")
    m = _ANSWER_VALUE.match(str(ans))
    if not m:
        raise InvalidQuestion("bad_answer", f"answer {str(ans)[:40]!r} is not an option letter")
    return ParsedQuestion(stem, options, m.group(1).upper(), "json")


def _from_text(t: str) -> ParsedQuestion:
    lines = t.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    starts = [i for i, line in enumerate(lines) if (m := _OPT_LINE.match(line)) and m.group(1) == "A"]
    if not starts:
        raise InvalidQuestion("no_question_format", "neither a JSON object nor 'A.' option lines")
    a = starts[0]
    options: dict[str, str] = {}
    answer = None
    for line in lines[a:]:
        am = _ANSWER_LINE.match(line)
        if am:
            answer = (am.group(1) or am.group(2)).upper()
            break
        om = _OPT_LINE.match(line)
        if om and len(options) >= len(LETTERS):
            raise InvalidQuestion("option_count", f"more than {len(LETTERS)} options")
        nxt = LETTERS[len(options)] if len(options) < len(LETTERS) else None
        if om and om.group(1) == nxt:
            options[nxt] = om.group(2) or ""
        elif om:
            raise InvalidQuestion("option_count", f"option {om.group(1)} out of order after {', '.join(options)}")
        elif line.strip() and options:
            last = next(reversed(options))
            options[last] = (options[last] + " " + line.strip()).strip()
    stem = "\n".join(lines[:a]).strip()
    stem = _QUESTION_LABEL.sub("", stem, count=1).strip()
    stem = re.sub(r"\n\s*(?:options|choices|answer choices)\s*:?\s*$", "", stem, flags=re.I).strip()
    if answer is None:
        raise InvalidQuestion("missing_answer", "no 'Answer: X' line after the options")
    return ParsedQuestion(stem, options, answer, "text")


# -- validation ----------------------------------------------------------------------------------------
_NOT_SELF_CONTAINED = re.compile(
    r"\b(?:the|this|these)\s+(?:passages?|texts?|contexts?|excerpts?|articles?|paragraphs?|documents?)\s+(?:above|below|provided|given)\b"
    r"|\b(?:above|preceding|aforementioned|provided)\s+(?:passages?|texts?|contexts?|excerpts?|articles?|paragraphs?|documents?|knowledge)\b"
    r"|\bgiven\s+(?:passages?|texts?|excerpts?|paragraphs?|documents?)\b"
    r"|\baccording\s+to\s+the\s+(?:text|context|passage|article|excerpt|paragraph|document|(?:medical\s+)?knowledge|information\s+(?:provided|given|above))\b"
    r"|\bseed\s+questions?\b|\bmedical\s+knowledge\s+context\b"
    r"|\b(?:described|mentioned|stated)\s+in\s+the\s+(?:text|passage|context|excerpt|article)\b"
    r"|\b(?:previous|preceding|above)\s+question\b"
    r"|\b(?:medical\s+)?knowledge\s+(?:provided|given)\b",
    re.I,
)
# Only phrases that point back at the prompt count: "in the context of sepsis", "passage of meconium" or
# "the findings described above" (the stem itself) do not.
_PLACEHOLDER = re.compile(
    r"\{[A-Za-z_][A-Za-z0-9_ ]*\}"
    r"|\[(?:LETTER|ANSWER|CORRECT[ _]ANSWER|OPTION(?:[ _][A-E1-5])?|QUESTION|STEM|RARE[ _]DISEASE|DISEASE(?:[ _]NAME)?|INSERT[^\]]*|PLACEHOLDER|TEXT|[A-Z]+_[A-Z_]+)\]"
    r"|<(?:the|a|an|one of|insert|your)\s[^<>]{0,80}>"
)
_FORMAT_EXAMPLE = {"the question stem", "first option", "second option", "third option", "fourth option", "fifth option",
                   "the letter of the correct option"} | {f"option {c}" for c in "abcde12345"} | {f"option {c} text" for c in "abcde"}
_ALL = re.compile(r"^(?:all|each)\s+of\s+(?:the\s+)?(?:above|these|those|the\s+options|the\s+choices)\b|^all\s+the\s+above\b|^all\s+(?:are|of\s+them\s+are)\s+(?:correct|true)\b")
_NONE = re.compile(r"^none\s+of\s+(?:the\s+)?(?:above|these|those|the\s+options|the\s+choices|the\s+above\s+options)\b|^none\s+(?:are|is|of\s+them\s+(?:are|is))\s+(?:correct|true)\b")
_COMBO = re.compile(
    r"^(?:(?:both|either|neither|only)\s+)?(?:(?:options?|choices?)\s+)?[a-e](?:(?:\s*,\s*|\s+(?:and|or|nor)\s+|\s+)(?:(?:options?|choices?)\s+)?[a-e])+"
    r"(?:\s+(?:are|is)\s+(?:correct|true|right))?(?:\s+only)?$|^(?:both|either|neither)\s+[a-e]{2,3}$")
_OPTIONS_IN_STEM = re.compile(r"(?:^|\n)\s*\(?[A-E][.)]\s+\S")


def normalize_option(text: str) -> str:
    """Case-, punctuation- and spacing-free form used to compare options."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def _strip_own_marker(key: str, value: str) -> str:
    """'A. Aspirin' under key A is 'Aspirin' (JSON replies often repeat the letter)."""
    return re.sub(rf"^\s*\(?{key}(?:[.):]|\)\.)\s+", "", value).strip()


def validate(pq: ParsedQuestion) -> ParsedQuestion:
    """Apply the quality rules of the module docstring; returns the cleaned question or raises InvalidQuestion."""
    stem = pq.question.strip()
    options = {k: _strip_own_marker(k, v) for k, v in pq.options.items()}
    keys = list(options)
    if not (MIN_OPTIONS <= len(keys) <= MAX_OPTIONS) or keys != list(LETTERS[: len(keys)]):
        raise InvalidQuestion("option_count", f"options {keys}: need A-D or A-E")
    if pq.answer not in options:
        raise InvalidQuestion("bad_answer", f"answer {pq.answer!r} is not among options {keys[0]}-{keys[-1]}")
    for k, v in options.items():
        if not v or not normalize_option(v):
            raise InvalidQuestion("empty_option", f"option {k} is empty")
        if len(v) > MAX_OPTION:
            raise InvalidQuestion("option_too_long", f"option {k} has {len(v)} characters (max {MAX_OPTION})")
    if len(stem) < MIN_STEM:
        raise InvalidQuestion("stem_too_short", f"{len(stem)} characters (min {MIN_STEM})")
    if len(stem) > MAX_STEM:
        raise InvalidQuestion("stem_too_long", f"{len(stem)} characters (max {MAX_STEM})")
    norm = {k: normalize_option(v) for k, v in options.items()}
    seen: dict[str, str] = {}
    for k, n in norm.items():
        if n in seen:
            raise InvalidQuestion("duplicate_options", f"options {seen[n]} and {k} are the same")
        seen[n] = k
    texts = [stem, *options.values()]
    for t in texts:
        if m := _PLACEHOLDER.search(t):
            raise InvalidQuestion("placeholder", f"template text {m.group(0)!r} left in the question")
    if normalize_option(stem) in _FORMAT_EXAMPLE or any(n in _FORMAT_EXAMPLE for n in norm.values()):
        raise InvalidQuestion("placeholder", "the format example was copied instead of a question")
    for t in texts:
        if m := _NOT_SELF_CONTAINED.search(t):
            raise InvalidQuestion("not_self_contained", f"refers to the prompt: {m.group(0)!r}")
    words = re.findall(r"[a-z0-9]+", stem.lower())
    if len({w for w in words if len(w) >= 3 and w.isalpha()}) < 3:
        raise InvalidQuestion("degenerate", "the stem has fewer than 3 distinct words")
    loops = Counter(tuple(words[i : i + 6]) for i in range(len(words) - 5)).most_common(1)
    if loops and loops[0][1] >= 4:
        raise InvalidQuestion("degenerate", f"the phrase {' '.join(loops[0][0])!r} repeats {loops[0][1]} times")
    if len(_OPTIONS_IN_STEM.findall(stem)) >= 2:
        raise InvalidQuestion("options_in_stem", "the stem repeats lettered options")
    for k, n in norm.items():
        if _ALL.match(n):
            raise InvalidQuestion("all_of_the_above", f"option {k}: {options[k]!r}")
        if _COMBO.match(n):
            raise InvalidQuestion("combination_option", f"option {k}: {options[k]!r}")
        if _NONE.match(n) and (k != keys[-1] or k == pq.answer):
            where = "is the generator's answer" if k == pq.answer else "is not the last option"
            raise InvalidQuestion("none_of_the_above", f"option {k} {options[k]!r} {where}")
    return ParsedQuestion(stem, options, pq.answer, pq.layout)


def parse_question(text: str, finish_reason: str | None = None) -> ParsedQuestion:
    """Parse and validate one reply; a reply cut off by the token limit that fails parsing is 'truncated'."""
    try:
        return validate(parse_reply(text))
    except InvalidQuestion as e:
        if finish_reason in TRUNCATED_FINISH and e.reason in ("bad_json", "no_question_format", "missing_answer", "option_count", "empty"):
            raise InvalidQuestion("truncated", f"hit max_tokens ({e.reason})") from None
        raise
