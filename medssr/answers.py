"""Answer extraction: the one place that knows how to read an option letter out of a model's output.

Everything that scores an answer (majority vote, rewards, evaluation, the sampler's early stop) calls this
module, so a vote, a reward and an accuracy always agree on what the model answered.

Reading rule: the LAST committed answer wins ("The answer is A. Wait... The answer is B." -> B). A commit is a
cue ("The answer is", "Final Answer:", "答案是", ``\\boxed{}``, ``<answer>``, "Therefore, B is correct", "the most
likely diagnosis is ...") followed by an option letter or an option's text; a bare last line ("Option B", "«B»",
"C. <option C's text>") also commits. The last commit gives None when it names two different options at once
("A or B"), names a letter that is not an option, is retracted right after ("..., but I am not sure. Let me think
again.") or later ("The answer is not A."; "It is B." after that commits again). Only the text after a closing
``</think>`` is read; an output still inside ``<think>`` (cut off mid-thought) has no answer. An output that only
repeats the prompt's option lines ("D. <option D's text>", the prompt continued) chooses nothing
(``echoes_options``), and an option line cut off mid-analysis ("A. Carcinoid syndrome - ") is no answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from functools import lru_cache

ANSWER_SUFFIX = "The answer is"
"""What a constrained second pass appends before forcing one option letter (paper: logit-bias pass)."""

MAX_CHARS = 100_000
"""Only the last MAX_CHARS characters are read (the last commit wins; ~25K tokens, far beyond paper's 4K responses)."""

_ALL_LETTERS = "ABCDEFGHIJ"  # same range as medssr.records.LETTERS; kept here so this module imports nothing
_NO_ANSWER = "<no answer>"  # a commit that names no single valid option

# --- cues -------------------------------------------------------------------------------------------------
# "The (final|correct) answer is", "Answer:", "answer would be", "the answer to this question is", "Ans:",
# "correct option: B", "best choice is", "I would choose", "<answer>", "\boxed{", JSON "answer": "C".
_CONNECT = r"(?:is|was|would\s+be|will\s+be|should\s+be|must\s+be|=|:|-|–|—)"
_ADVERB = r"(?:\s*,?\s*(?:therefore|thus|then|clearly|definitely|certainly|probably|likely|most\s+likely|indeed|simply)\b\s*,?)?"
_HARD_CUE = re.compile(
    r"(?:"
    rf"\bfinal\s+answer\b[\"']?(?:\s*{_CONNECT})?"
    rf"|\banswer(?:\s+to\s+(?:this|the)\s+(?:question|problem|case)|\s+here|\s+choice|\s+option)?\b[\"']?\s*{_CONNECT}"
    rf"|\b(?:correct|right|best|final|most\s+appropriate)\s+(?:option|choice|response)\b[\"']?\s*{_CONNECT}"
    r"|\bans\b\.?\s*[:=]"
    r"|\bI\s+(?:would\s+|will\s+|'ll\s+|’ll\s+)?(?:choose|select|pick|go\s+with)\b\s*:?"
    r"|<answer>"
    r"|\\boxed\s*\{"
    r"|(?:最终|正确)?答案\s*(?:应该|应)?(?:是|为|(?:選|选)(?!项))?\s*:?"
    r"|(?:故|所以|因此|因而)\s*(?:应)?选(?:择)?"
    rf"){_ADVERB}",
    re.IGNORECASE,
)
# "the most likely diagnosis is ...", "the most appropriate next step in management is ...", "best treatment is".
_SOFT_CUE = re.compile(
    r"\b(?:most\s+likely|most\s+appropriate|most\s+probable|best|correct)\s+(?:[a-z-]+\s+){0,4}?(?:is|would\s+be)\b\s*:?",
    re.IGNORECASE,
)
# "Therefore, B is correct", "(C) is the correct answer", "option B is the most likely diagnosis".
_LETTER_FIRST = re.compile(
    r"(?:(?:^|[\n,;:.!?(])[ \t]*|\b(?:[Ss]o|[Tt]hus|[Tt]herefore|[Hh]ence|[Oo]ption|[Cc]hoice|[Aa]nswer|[Ll]etter)\s+)"
    r"\(?([A-J])\)?\s+(?:is|would\s+be|must\s+be|seems\s+to\s+be|appears\s+to\s+be)\s+(?:the\s+)?"
    r"(?:(?:most\s+likely|correct|right|best|true)\b|answer\b)"
)
# "<option text> is the most likely diagnosis / is the correct answer / is correct".
_TEXT_FIRST_TAIL = re.compile(
    r"(?<=\S)\s+(?:is|would\s+be)\s+(?:the\s+)?(?:most\s+likely\s+(?:diagnosis|answer|cause|option|choice)|correct\s+(?:answer|option|choice)"
    r"|right\s+answer|best\s+(?:answer|option|choice)|correct\b)",
    re.IGNORECASE,
)
# A retraction right after a commit makes it tentative ("I think E, but I am not sure. Let me think again.").
_DOUBT = re.compile(
    r"not\s+(?:entirely\s+|completely\s+|100%\s+)?(?:sure|certain|confident)|(?:may|might|could)\s+be\s+wrong"
    r"|let\s+me\s+(?:think|reconsider|re-?evaluate|re-?think|re-?examine)|\breconsider|\bwait\s*[,.!]|\bhmm+\b",
    re.IGNORECASE,
)
# A cue inside a quoted instruction or example ('Example: "The answer is A"') is no commit.
_QUOTED = re.compile(r"(?:\bexample|\be\.g\.|\bfor\s+instance|\bsuch\s+as)\s*[:,]?\s*[\"“'‘]?\s*(?:(?:the|my|final)\s+)*$", re.IGNORECASE)
_NEGATED = re.compile(r"\b(?:do(?:n't|n’t|\s+not)|does(?:n't|n’t|\s+not)|not)\s+(?:think|believe|say|sure)\b|\bdoubt\b", re.IGNORECASE)
# Clause openers that make a cue a guess, not a commit (used only by the sampler's early stop).
_TENTATIVE = re.compile(r"\b(?:think|believe|guess|maybe|perhaps|might|initial|suspect|could|possibly)\b", re.IGNORECASE)

# Text in front of an answer expression that is not part of it: spaces, quotes, brackets, markup, LaTeX.
_LEAD = re.compile(
    r"(?:[\s\"'“”‘’\[{$:\-–—]|选项|\\[(\[]|\\(?:boxed|text|textbf|textrm|mathrm|mathbf|bf)\s*\{|\b(?:option|choice|letter)\b\s*)*",
    re.IGNORECASE,
)
_LETTER_TOKEN = re.compile(r"(\()?([A-Ja-j])(\))?")
_SECOND = re.compile(r"\s*(?:,|/|&|\band/or\b|\bor\b|\band\b)\s*(?:(?:option|choice)\s+)?", re.IGNORECASE)
_VERB_AFTER = re.compile(r"\s+(?:is|are|was|were|can|could|would|may|might|has|does)\b", re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:[Tt]he|[Aa]n|a)\s+")
_OPTION_LINE = re.compile(r"^\(?[A-J][.):]\s")
_BARE_LINE = re.compile(r"^(?:(?i:option|choice|answer)\s*:?\s*)?(?:\(([A-J])\)|([A-J])[.):]?)\s*(.*)$")
_ECHO_LINE = re.compile(r"^\(?([A-J])[.):]\s*(.*)$")
_MARKUP = str.maketrans({"*": "", "`": "", "＊": "", **{q: '"' for q in "«»‹›「」『』【】"}})
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
# "The answer is not A" / "it is not (A)": retracts an earlier commit to that letter.
_NOT_LETTER = re.compile(r"\b(?i:answer|it)\s+(?i:is|was|would\s+be)\s+not\s+(?:(?i:option|choice)\s+)?\(?([A-J])\)?(?![\w-])")
# "It is B." at the start of a sentence commits to a letter (the second half of "The answer is not A. It is B.").
# The letter must end the clause, so 'It is A 45-year-old' and 'It is I think' are not read.
_IT_IS = re.compile(r"(?:^|(?<=[.!?\n])|\b(?:[Ss]o|[Tt]hus|[Tt]herefore|[Hh]ence)\s*,?)\s*[Ii]t(?:'s|’s|\s+is|\s+must\s+be|\s+should\s+be)\s+"
                    r"(?:(?:option|choice)\s+)?\(?([A-J])\)?(?=[.,;:!)\n]|\s*$)")
# A cut-off analysis line ends on a connector: "A. Carcinoid syndrome - ", "B. Cushing syndrome:".
_DANGLING = tuple("-–—:,;/(&+")


def letters_for(options: Mapping[str, str]) -> list[str]:
    """The option letters of a question in alphabetical order (keys outside A-J are ignored)."""
    return sorted({k.strip().upper() for k in options if isinstance(k, str) and k.strip().upper() in _ALL_LETTERS and k.strip()})


def _clean(text: str) -> str:
    """Fold full-width forms (Ｃ -> C) and drop markdown emphasis so '**C**' reads as 'C'."""
    return unicodedata.normalize("NFKC", text).translate(_MARKUP).replace("__", "")


_SOFT_PUNCT = str.maketrans({c: " " for c in ".,;:!?'\"()[]{}-–—_/\\*`“”‘’…·•|。、「」『』【】"})


def _norm(s: str) -> str:
    """Case- and punctuation-insensitive form used to match an option by its text (symbols like ↑ ↓ + > stay)."""
    return " ".join(unicodedata.normalize("NFKC", s).lower().translate(_SOFT_PUNCT).split())


def _is_letter(t: str) -> bool:
    return len(t) == 1 and t.upper() in _ALL_LETTERS


@lru_cache(maxsize=4096)
def _norm_options(items: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """(letter, normalised text) pairs, longest text first so 'Factor VIII' beats 'Factor VII'."""
    out = [(k, _norm(v)) for k, v in items]
    return tuple(sorted(((k, v) for k, v in out if v), key=lambda kv: -len(kv[1])))


def _options_key(options: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((k.strip().upper(), v if isinstance(v, str) else str(v)) for k, v in options.items() if isinstance(k, str))


def _match_text(expr: str, norm_opts: tuple[tuple[str, str], ...], letters_too: bool = True) -> tuple[str, int] | None:
    """(letter, normalised length consumed) of the option whose text the expression starts with.

    With letters_too=False an option whose whole text is one letter ('A. C') is skipped, so 'C' stays a letter.
    """
    head = _norm(expr[:400])
    variants = [head]
    art = _ARTICLE.match(expr)
    if art:
        variants.append(head.split(" ", 1)[1] if " " in head else "")
    for variant in variants:
        for letter, text in norm_opts:
            if not letters_too and _is_letter(text):
                continue
            if variant.startswith(text) and (len(variant) == len(text) or variant[len(text)] == " "):
                twins = [k for k, t in norm_opts if t == text]
                return (letter if len(twins) == 1 else _NO_ANSWER), len(text)  # duplicate option texts: can't tell
    return None


def _is_cjk(ch: str) -> bool:
    return "\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"


def _letter_at(expr: str) -> tuple[str, int] | None:
    """(LETTER, end offset) when the expression starts with a standalone option letter."""
    m = _LETTER_TOKEN.match(expr)
    if not m:
        return None
    opened, letter, closed = m.groups()
    if opened and not closed:
        return None
    end = m.end()
    nxt = expr[end] if end < len(expr) else ""
    rest = expr[end:]
    if nxt and ((nxt.isalnum() and not _is_cjk(nxt)) or nxt in "-_" or (nxt in "'’" and rest[1:2].isalpha())):
        return None  # 'C7', 'B-cell', "A's", 'Cervical'  ("'A'" and '选B项' are fine)
    if letter.islower() and nxt.isspace():
        return None  # 'a 45-year-old', 'c and'
    if letter == "I" and re.match(r"\s+[a-z]", rest):
        return None  # the pronoun: 'The answer is I think ...'
    return letter.upper(), end


def _parse_expr(expr: str, norm_opts: tuple[tuple[str, str], ...], valid: str) -> str | None:
    """The answer named at the start of an answer expression: a letter, _NO_ANSWER, or None."""
    expr = expr.lstrip(" \t\n\"'“”‘’$:")
    # Option text first ('B cells', 'I, III, IV', 'Option 1 and 2', '>5'), then a letter, then one-letter texts.
    text_hit = _match_text(expr, norm_opts, letters_too=False)
    if text_hit is None:
        expr = expr[_LEAD.match(expr).end() :]
        text_hit = _match_text(expr, norm_opts, letters_too=False)
    if not expr:
        return None
    got = None if text_hit else _letter_at(expr)
    if text_hit is None and got is None:
        text_hit = _match_text(expr, norm_opts)
    if text_hit:
        first, end = text_hit[0], _raw_end(expr, text_hit[1])
    elif got:
        first, end = got[0], got[1]
    else:
        return None
    if first not in valid:
        if got:  # 'E' where the options are 'A. A ... D. E': the option whose text is that letter
            named = [k for k, t in norm_opts if t == first.lower()]
            return named[0] if len(named) == 1 else _NO_ANSWER
        return _NO_ANSWER  # a letter that is not an option counts as no valid answer
    if _continues_as_option_list(expr[end:], norm_opts, first):
        return None  # 'Answer: A) Factor VII B) Factor VIII C) ...' repeats the options, it does not choose one
    second = _second_answer(expr[end:], norm_opts)
    if second and second != first:
        return _NO_ANSWER
    return first


def _raw_end(expr: str, norm_len: int) -> int:
    """Offset in the raw expression after `norm_len` normalised characters (approximate, for the 'or' check)."""
    seen = 0
    for i, ch in enumerate(expr):
        if seen >= norm_len:
            return i
        if ch.isalnum():
            seen += 1
        elif seen and expr[i - 1].isalnum():
            seen += 1  # a collapsed separator
    return len(expr)


def _continues_as_option_list(rest: str, norm_opts: tuple[tuple[str, str], ...], first: str) -> bool:
    """True when the answer is followed by two or more other options, label and text back to back."""
    texts = dict(norm_opts)
    s = _norm(rest[:600])
    own = texts.get(first, "")
    if own and (s == own or s.startswith(own + " ")):
        s = s[len(own) :].lstrip()
    seen: set[str] = set()
    while len(s) > 2 and s[1] == " " and s[0].upper() in texts:
        letter, body = s[0].upper(), s[2:]
        text = texts[letter]
        if letter == first or letter in seen or not (body == text or body.startswith(text + " ")):
            break
        seen.add(letter)
        s = body[len(text) :].lstrip()
    return len(seen) >= 2


def _second_answer(rest: str, norm_opts: tuple[tuple[str, str], ...]) -> str | None:
    """A second option named right after the first ('A or B', 'A and C', 'yes/no'), if any."""
    m = _SECOND.match(rest)
    if not m or not m.group(0).strip():
        return None
    tail = rest[m.end():]
    tail = tail[_LEAD.match(tail).end():]
    got = _letter_at(tail)
    if got and (tail[:1].isupper() or tail[:1] == "(") and not _VERB_AFTER.match(tail[got[1] :]):
        return got[0]
    hit = _match_text(tail, norm_opts, letters_too=False)
    if hit:
        after = tail[_raw_end(tail, hit[1]) :]
        if not after.strip() or after.lstrip()[:1] in ".;:!?)\n" or after[:1] in ".,;:!?)":
            return hit[0]  # 'yes or no.' names two options; 'yes, and no further ...' does not
    return None


def _clause_before(text: str, pos: int, window: int = 300) -> str:
    """The clause that ends at `pos` (looks back at most `window` characters, so long texts stay linear)."""
    lo = max(0, pos - window)
    start = max(text.rfind(c, lo, pos) for c in ".!?;\n")
    return text[max(start + 1, lo) : pos]


def _line_before(text: str, pos: int, window: int = 300) -> str:
    lo = max(0, pos - window)
    return text[max(text.rfind("\n", lo, pos) + 1, lo) : pos]


def _candidates(text: str, options: Mapping[str, str], complete: bool = True) -> list[tuple[int, str]]:
    """Every (position, answer) commit in the cleaned text after a leading option echo; answer is a letter,
    _NO_ANSWER, or '!X' (a retraction of X). The bare last line counts only in a complete output."""
    valid = "".join(letters_for(options))
    norm_opts = _norm_options(_options_key(options))
    found: list[tuple[int, str]] = []
    echo_end = _echo_end(text, norm_opts)

    def keep(pos: int, ans: str | None, cue_start: int, end_pos: int) -> None:
        """Record a commit unless it is negated, quoted as an example, or retracted right after."""
        if ans is None:
            return
        line = _line_before(text, cue_start)
        if _NEGATED.search(_clause_before(text, cue_start)) or _QUOTED.search(line):
            return
        if _DOUBT.search(text[end_pos : end_pos + 100]):
            return
        found.append((pos, ans))

    for cue in (_HARD_CUE, _SOFT_CUE):
        for m in cue.finditer(text):
            expr = text[m.end() : m.end() + 600]
            keep(m.end(), _parse_expr(expr, norm_opts, valid), m.start(), m.end() + 2)
    for m in _LETTER_FIRST.finditer(text):
        letter = m.group(1)
        if text[m.end() : m.end() + 3].lstrip().startswith("?"):
            continue  # 'Therefore, B is correct?' asks, it does not commit
        keep(m.start(1), letter if letter in valid else _NO_ANSWER, m.start(1), m.end())
    for m in _IT_IS.finditer(text):
        keep(m.start(1), m.group(1) if m.group(1) in valid else _NO_ANSWER, m.start(), m.end())
    for m in _NOT_LETTER.finditer(text):
        found.append((m.start(), "!" + m.group(1).upper()))
    for m in _TEXT_FIRST_TAIL.finditer(text):
        before = _norm(text[max(0, m.start() - 300) : m.start()])
        for letter, opt in norm_opts:
            if before.endswith(opt) and (len(before) == len(opt) or before[-len(opt) - 1] == " "):
                keep(m.start() - 1, letter, m.start(), m.end())
                break
    bare = _bare_last_line(text, norm_opts, valid) if complete else None
    if bare and text.rstrip().rfind("\n") + 1 >= echo_end:  # a last line inside the echo is the echo itself
        found.append(bare)
    return [(pos, ans) for pos, ans in found if pos >= echo_end]


def _echo_end(text: str, norm_opts: tuple[tuple[str, str], ...]) -> int:
    """End offset of a leading run of lines that repeat the prompt's option lines, or 0.

    A run counts when it holds two or more option lines, or one that is the prompt's last option (the prompt
    ends with it, so a model that "answers" with it is continuing the prompt), or a line that continues the list
    with the next letter ('D. no' after 'C. maybe'). A short header line ending in ':' ('Options:', 'Answer:') may
    come first.
    """
    texts = dict(norm_opts)
    if not texts:
        return 0
    last = max(texts)
    after = chr(ord(last) + 1)
    pos, run, end = 0, [], 0
    for i, line in enumerate(text.split("\n")):
        stripped = line.strip().strip("#").strip().lstrip("-•").strip().strip('"').strip()
        nxt = pos + len(line) + 1
        m = _ECHO_LINE.match(stripped)
        if m and (m.group(1) == after or (m.group(1) in texts and _norm(m.group(2)) == texts[m.group(1)])) \
                and not stripped.endswith(_DANGLING):
            run.append(last if m.group(1) == after else m.group(1))
            end = min(nxt, len(text))
        elif stripped and not (i == 0 and stripped.endswith(":") and len(stripped) < 40 and not run):
            break
        pos = nxt
    return end if len(run) >= 2 or (run and run[-1] == last) else 0


def _bare_last_line(text: str, norm_opts: tuple[tuple[str, str], ...], valid: str) -> tuple[int, str] | None:
    """A last line that is only an answer ('C', '(C) Worster-Drought syndrome'), unless it ends a list of options."""
    lines = [ln.strip().strip("#").strip().strip('"').strip() for ln in text.rstrip().splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return None
    m = _BARE_LINE.match(lines[-1])
    if not m:
        return None
    letter, tail = m.group(1) or m.group(2), m.group(3).strip()
    if tail.endswith(_DANGLING) or lines[-1].endswith(":"):
        return None  # an analysis line cut off mid-sentence ('A. Carcinoid syndrome - '), a label with nothing after ('A:')
    prev = _ECHO_LINE.match(lines[-2]) if len(lines) > 1 else None
    if prev and ord(letter) == ord(prev.group(1)) + 1:
        return None  # 'A. ...\nB.': the next label of a list, not an answer
    if tail:
        texts = dict(norm_opts)
        if letter not in texts or _norm(tail) != texts[letter]:
            return None
        if len(lines) > 1 and _OPTION_LINE.match(lines[-2]):
            return None  # the model repeated the option list
    return (len(text), letter if letter in valid else _NO_ANSWER)


def visible_answer_text(text: str) -> str | None:
    """The part of an output that may hold its answer: after the last ``</think>``; None while still thinking."""
    close = text.rfind(_THINK_CLOSE)
    if close >= 0:
        return text[close + len(_THINK_CLOSE) :]
    return None if _THINK_OPEN in text else text


def extract_answer(text: str, options: Mapping[str, str], complete: bool = True) -> str | None:
    """The option letter a careful reader takes from `text`: the last committed answer, or None.

    ``complete=False`` (the output hit max_new_tokens) drops the bare-last-line reading: a cut-off line is unfinished.
    """
    if not isinstance(text, str) or not text or not options:
        return None
    visible = visible_answer_text(text[-MAX_CHARS:])
    if not visible:
        return None
    found = sorted(_candidates(_clean(visible), options, complete), key=lambda pa: pa[0])
    answer = None
    for _, ans in found:
        if ans.startswith("!"):
            answer = None if answer == ans[1:] else answer  # 'The answer is not A.' retracts an earlier A
        else:
            answer = ans
    return None if answer == _NO_ANSWER else answer


def echoes_options(text: str, options: Mapping[str, str], complete: bool = True) -> bool:
    """True when an output only repeats the prompt's option lines (and commits to nothing after them).

    Such an output continues the prompt instead of answering, so it goes to the second pass, not to a vote.
    """
    if not isinstance(text, str) or not options:
        return False
    visible = visible_answer_text(text[-MAX_CHARS:])
    if not visible:
        return False
    echo = _echo_end(_clean(visible), _norm_options(_options_key(options))) > 0
    return echo and extract_answer(text, options, complete) is None


# --- cheap early-stop check ---------------------------------------------------------------------------------
_COMMIT_LEAD = r"[\s\"'“”‘’\[{(*$:=>\-–—]*(?:\\(?:text|textbf|mathrm|mathbf)\s*\{\s*)?(?:(?:option|choice|letter)\s+)?[\s(*]*"
_BOUNDARY = r"(?=[.,;:!?)\]}*\"'<\n。，、；：！？）】」])"


@lru_cache(maxsize=1024)
def _commit_regex(opt_texts: tuple[str, ...]) -> re.Pattern[str]:
    """Cue + (letter | option text) + a boundary character; cached per option set."""
    texts = "|".join(re.escape(t) for t in sorted(opt_texts, key=len, reverse=True) if not _is_letter(t))
    answer = rf"(?:(?:{texts})[ \t]*{_BOUNDARY}|[A-Ja-j]\)?{_BOUNDARY})" if texts else rf"[A-Ja-j]\)?{_BOUNDARY}"
    return re.compile(rf"(?:{_HARD_CUE.pattern}){_COMMIT_LEAD}{answer}", re.IGNORECASE)


def has_committed_answer(text: str, options: Mapping[str, str]) -> bool:
    """True once `text` holds a firm commit ('The answer is C.'); a sampler stops generating there.

    Used for the label stage's votes (early stop saves tokens); evaluation generates to the end and reads the
    last commit instead (eval.sampling.stop_at_answer: false), since a model may revise its first answer.
    A letter counts only with a boundary after it, so 'The answer is A' may still become 'The answer is
    Anemia'; guesses ('I think the answer is E'), quoted format examples and text inside an unclosed
    ``<think>`` do not count.
    """
    if not text:
        return False
    text = visible_answer_text(text) or ""  # no early stop inside <think>: the thought is not an answer
    texts = tuple(unicodedata.normalize("NFKC", v).strip() for v in options.values() if isinstance(v, str) and v.strip())
    for m in _commit_regex(texts).finditer(unicodedata.normalize("NFKC", text)):
        clause = _clause_before(m.string, m.start())
        line = _line_before(m.string, m.start())
        if _TENTATIVE.search(clause) or _NEGATED.search(clause) or _QUOTED.search(line):
            continue
        return True
    return False
