"""Answer extraction: the one place that knows how to read an option letter out of a model's output.

Everything that scores an answer (majority vote, rewards, evaluation, the sampler's early stop) calls this
module, so a vote, a reward and an accuracy always agree on what the model answered.

Reading rule: the LAST committed answer wins ("The answer is A. Wait... The answer is B." -> B). A commit is a
cue ("The answer is", "Final Answer:", "答案是", ``\\boxed{}``, ``<answer>``, "Therefore, B is correct", "the most
likely diagnosis is ...") followed by an option letter or an option's text; a bare last line ("Option B", "«B»",
"C. <option C's text>", an option's whole text: "Hypothyroidism", "No.") also commits. So do answers without a cue
word when the answer ends its clause ('B is wrong', 'B cells are', 'C. difficile', 'B?' do not): a conclusion
("Therefore: B", "Thus, B.", "So: (B)", "In conclusion, yes"), a choice among the options ("Among the options, B best
explains ..."), a first-person answer ("I think it's B", "The answer is I think B", "My best guess is E"), "most
consistent with <option text>", and for yes/no questions a first or last line opening "Yes, ..." / "No." The last
commit gives None when it names two different options at once ("A or B", "A or maybe B", "either B or C", "B, or
possibly D", "I'm torn between B and D"), names a letter that is not an option, is retracted right after ("..., but I
am not sure. Let me think again.") or later ("The answer is not A."; "It is B." after that commits again). Only the
text after a closing ``</think>`` is read; an output still inside ``<think>`` (cut off mid-thought) has no answer.
An output that only repeats the prompt's option lines ("D. <option D's text>", the prompt continued) chooses
nothing (``echoes_options``), and an option line cut off mid-analysis ("A. Carcinoid syndrome - ") is no answer.
"""

from __future__ import annotations

import itertools
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
    r"|let\s+me\s+(?:think|reconsider|re-?evaluate|re-?think|re-?examine|re-?read)|\breconsider|\bwait\s*[,.!—–]|\bhmm+\b",
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
# What joins a second option to the first: 'A or B', 'A and C', 'B/D', 'A or maybe B', 'B, or possibly D', 'D (or C)',
# 'B, if not C', 'B vs C'. A hedge word alone also joins ('B, perhaps C').
_HEDGE_WORD = r"(?:maybe|perhaps|possibly|potentially|probably|conceivably|alternatively|even|else|also|likely|arguably)"
_SECOND = re.compile(
    r"\s*(?:(?:,|/|&|\(|—|–|\bvs\b\.?|\bversus\b)\s*)?(?:\b(?:and/or|or|and|if\s+not)\b\s*,?\s*)?"
    rf"(?:\b{_HEDGE_WORD}\b\s*,?\s*)*(?:(?:option|choice)\s+)?",
    re.IGNORECASE,
)
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

# --- readings without a cue word (conclusion lines, "Among the options", "I think it's B", yes/no, option text) ---
# A conclusion word before a bare answer: "Therefore: B", "Thus, B.", "So: (B)", "In conclusion, yes", "Verdict: D".
# Nouns ("Verdict", "Diagnosis") need a separator after them; the adverbs do not ("So B.").
_CONCLUSION_WORDS = (
    r"(?:therefore|thus|so|hence|consequently|accordingly|ergo|overall|ultimately|finally|in\s+conclusion|in\s+summary"
    r"|in\s+sum|to\s+conclude|to\s+sum\s+up|to\s+summari[sz]e|in\s+short|in\s+brief|in\s+the\s+end|all\s+in\s+all"
    r"|all\s+told|bottom\s+line|short\s+answer)\b[ \t]*(?:[:,\-–—][ \t]*)?"
    r"|(?:my\s+)?(?:final\s+)?(?:conclusion|verdict|pick|selection|impression|diagnosis|call)[ \t]*[:\-–—][ \t]*"
)
_CONCLUDE = re.compile(rf"(?:^|(?<=[\n.!?;,]))[ \t>#•*\-]*(?i:{_CONCLUSION_WORDS})")
# "Among the options, B best explains ...", "Of the choices, C is most consistent with ...", "Of these, option D ...".
_AMONG = re.compile(
    r"\b(?i:among(?:st)?|of|out\s+of|from)\s+"
    r"(?:(?i:all|the|these|those|given|listed|provided|available|remaining|above|answer|offered|presented|possible"
    r"|two|three|four|five|six)\s+)*"
    r"(?i:options|choices|answers|alternatives|possibilities|candidates|diagnoses|ones|them|these|those)"
    r"(?:\s+(?i:given|listed|provided|above|offered|presented|here|available|remaining|shown))?[ \t]*[,:—–\-]?[ \t]*"
)
_SUPERLATIVE = re.compile(
    r"\b(?:best|most(?!\s+(?:un|in|less))|likeliest|correct|right|only\s+one|strongest|closest|optimal|ideal|preferred"
    r"|answer|stands\s+out)\b",
    re.IGNORECASE,
)
_NEG_WORDS = re.compile(r"\b(?:not|no|never|least|less|hardly|neither|nor|wrong|incorrect)\b|n['’]t\b", re.IGNORECASE)
_ASIDES = re.compile(r"\([^()\n]{0,80}\)|[—–][^—–\n]{0,80}[—–]|,[^,\n]{0,80},")
# A first-person guess that names an answer: "I think it's B", "I believe C is correct", "My best guess is E",
# "I'm going with D", "I'd say B", "I lean towards A".
_BELIEF = re.compile(
    r"\bI(?:[ \t]+(?:really|strongly|honestly|still|do|now|personally|genuinely))?[ \t]+"
    r"(?:think|believe|guess|suspect|feel(?:[ \t]+like)?|reckon|suppose)\b(?:[ \t]+that\b)?"
    r"|\bI(?:['’]m|[ \t]+am)[ \t]+(?:(?:fairly|pretty|quite|reasonably|very|almost|now|still|most)[ \t]+)?"
    r"(?:sure|confident|certain|convinced|positive|leaning|inclined[ \t]+to[ \t]+(?:say|go[ \t]+with|pick|choose)"
    r"|going[ \t]+(?:to[ \t]+go[ \t]+)?with|going[ \t]+for|settling[ \t]+on|opting[ \t]+for|sticking[ \t]+with)\b"
    r"(?:[ \t]+(?:that|about|of|towards?|to)\b)?"
    r"|\bI(?:['’]d|[ \t]+would)[ \t]+(?:say|lean(?:[ \t]+towards?|[ \t]+to)?|go[ \t]+for|opt[ \t]+for|favou?r|bet[ \t]+on)\b"
    r"|\bI(?:[ \t]+will)?[ \t]+(?:lean[ \t]+(?:towards?|to)|favou?r|prefer|opt[ \t]+for|go[ \t]+for|settle[ \t]+on|stick[ \t]+with)\b"
    r"|\bI['’]ll[ \t]+(?:say|go[ \t]+for|opt[ \t]+for|settle[ \t]+on|stick[ \t]+with)\b"
    r"|\bmy[ \t]+(?:(?:best|final|top)[ \t]+)?(?:guess|pick|bet|choice|vote|selection|impression|conclusion)[ \t]*"
    r"(?:is|would[ \t]+be|will[ \t]+be|:|=|-|–|—)",
    re.IGNORECASE,
)
_BELIEF_LINK = re.compile(
    r"(?:[ \t]*,?[ \t]*(?:it(?:['’]s|[ \t]+is|[ \t]+(?:has[ \t]+to|must|should|would|will|might|may|could)[ \t]+be)|this[ \t]+is"
    r"|that(?:['’]s|[ \t]+is)|the[ \t]+(?:(?:correct|right|best|final|most[ \t]+likely|likely)[ \t]+)?"
    r"(?:answer|option|choice|diagnosis|pick)(?:[ \t]+here)?[ \t]*(?:is|would[ \t]+be|must[ \t]+be|should[ \t]+be|will[ \t]+be|:)"
    r"|with|on|for)\b[ \t]*:?)*",
    re.IGNORECASE,
)
# "most consistent with <option>", "best explained by <option>", "The diagnosis is <option>", "a classic case of".
_TEXT_CUE = re.compile(
    r"\b(?:most|best)\s+(?:consistent\s+with|compatible\s+with|suggestive\s+of|indicative\s+of|explained\s+by"
    r"|accounted\s+for\s+by|in\s+keeping\s+with)"
    r"|\b(?:the|my|final|working|likely|probable|definitive|unifying)\s+diagnosis\s+(?:here\s+)?(?:is|would\s+be|must\s+be|:)"
    r"|\b(?:classic|typical|textbook)\s+(?:case|picture|presentation|example)\s+of",
    re.IGNORECASE,
)
# Two options named as the conclusion ("I'm torn between B and D", "it could be either A or C"): no answer.
_HEDGE = re.compile(
    r"\b(?:(?:torn|split|undecided|stuck|hesitating|wavering)\s+between"
    r"|(?:can['’]?t|cannot|can\s+not|couldn['’]?t|could\s+not)\s+(?:decide|choose|pick)\s+between"
    r"|(?:it|answer)\s+(?:could|might|may)\s+(?:also\s+|well\s+)?be(?:\s+either)?|it(?:['’]s|\s+is)\s+either)\s+",
    re.IGNORECASE,
)
# Words without which _TEXT_CUE / _HEDGE cannot match (a cheap skip of the scan).
_TEXT_CUE_WORDS = ("consistent", "compatible", "suggestive", "indicative", "explained", "accounted", "keeping", "diagnosis",
                   "classic", "typical", "textbook")
_HEDGE_WORDS = ("between", "could", "might", "may", "either")
_HEDGE_CLAUSE_START = re.compile(
    r"^[\s,]*(?:(?:so|but|and|thus|honestly|now|overall|still|hmm+|well|i\s+(?:think|guess|believe)|at\s+this\s+point)\b[\s,]*)*$",
    re.IGNORECASE,
)
# What may follow an answer read without a cue: the end, punctuation (not 'C. difficile'), an aside, a reason, or a
# predicate that keeps it chosen ('B is correct'); 'B is wrong', 'B cells are', 'B?' are not answers.
_POSITIVE = (
    r"(?:is|would\s+be|seems\s+to\s+be|must\s+be|remains)\s+(?:clearly\s+|definitely\s+|certainly\s+)?(?:the\s+)?"
    r"(?:correct|right|best|most\s+likely|likeliest|answer|one|diagnosis|most\s+appropriate|most\s+consistent|true|culprit|cause)\b"
)
_AFTER_OK = re.compile(
    r"[ \t]*(?:$|\n|[.!](?![ \t]*[a-z])|[)\]]|[,;:]|[—–]|-(?=\s)|\("
    r"|(?i:because|since|as|given|due|based|here|overall|then|which|considering|rather\s+than|in\s+view"
    r"|for\s+(?:this|these|the|its|her|his))\b"
    rf"|(?i:{_POSITIVE}))"
)


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
    got = _read_answer(expr, norm_opts, valid)
    return got[0] if got else None


# An aside between a cue and its answer: 'The answer is I think B', 'The answer is, I believe, C', 'either B or C'.
_ASIDE = re.compile(
    r"[\s,]*(?:(?:I\s+(?:think|believe|guess|suppose|reckon|feel|suspect|would\s+say)|I['’]d\s+say|either|perhaps|arguably)\b[\s,]*)+",
    re.IGNORECASE,
)


def _read_answer(expr: str, norm_opts: tuple[tuple[str, str], ...], valid: str) -> tuple[str, int] | None:
    """(answer, end offset in `expr`) for the answer named at the start of `expr`, or None; the end is past a
    second option when one is named ('A or maybe B' -> _NO_ANSWER)."""
    start = len(expr) - len(expr.lstrip(" \t\n\"'“”‘’$:"))
    aside = _ASIDE.match(expr, start)
    if aside and aside.group(0).strip(" \t\n,"):
        start = aside.end()
    e = expr[start:]
    # Option text first ('B cells', 'I, III, IV', 'Option 1 and 2', '>5'), then a letter, then one-letter texts.
    text_hit = _match_text(e, norm_opts, letters_too=False)
    if text_hit is None:
        lead = _LEAD.match(e).end()
        start, e = start + lead, e[lead:]
        text_hit = _match_text(e, norm_opts, letters_too=False)
    if not e:
        return None
    got = None if text_hit else _letter_at(e)
    if text_hit is None and got is None:
        text_hit = _match_text(e, norm_opts)
    if text_hit:
        first, end = text_hit[0], _raw_end(e, text_hit[1])
    elif got:
        first, end = got[0], got[1]
    else:
        return None
    if first not in valid:
        if got:  # 'E' where the options are 'A. A ... D. E': the option whose text is that letter
            named = [k for k, t in norm_opts if t == first.lower()]
            return (named[0] if len(named) == 1 else _NO_ANSWER), start + end
        return _NO_ANSWER, start + end  # a letter that is not an option counts as no valid answer
    if _continues_as_option_list(e[end:], norm_opts, first):
        return None  # 'Answer: A) Factor VII B) Factor VIII C) ...' repeats the options, it does not choose one
    second = _second_answer(e[end:], norm_opts)
    if second and second[0] != first:
        return _NO_ANSWER, start + end + second[1]
    return first, start + end


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


def _second_answer(rest: str, norm_opts: tuple[tuple[str, str], ...]) -> tuple[str, int] | None:
    """(option, end offset) of a second option named right after the first ('A or B', 'A and C', 'yes/no',
    'A or maybe B', 'B, or possibly D'), if any."""
    m = _SECOND.match(rest)
    if not m or not m.group(0).strip():
        return None
    tail = rest[m.end():]
    skip = _LEAD.match(tail).end()
    tail = tail[skip:]
    got = _letter_at(tail)
    if got and (tail[:1].isupper() or tail[:1] == "(") and not _VERB_AFTER.match(tail[got[1] :]):
        return got[0], m.end() + skip + got[1]
    hit = _match_text(tail, norm_opts, letters_too=False)
    if hit:
        end = _raw_end(tail, hit[1])
        after = tail[end:]
        if not after.strip() or after.lstrip()[:1] in ".;:!?)\n" or after[:1] in ".,;:!?)":
            return hit[0], m.end() + skip + end  # 'yes or no.' names two options; 'yes, and no further ...' does not
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
        second = _second_answer(text[m.end() : m.end() + 200], norm_opts)  # "It's B, or maybe D."
        ans = _NO_ANSWER if m.group(1) not in valid or (second and second[0] != m.group(1)) else m.group(1)
        keep(m.start(1), ans, m.start(), m.end())
    for m in _NOT_LETTER.finditer(text):
        found.append((m.start(), "!" + m.group(1).upper()))
    for m in _TEXT_FIRST_TAIL.finditer(text):
        before = _norm(text[max(0, m.start() - 300) : m.start()])
        for letter, opt in norm_opts:
            if before.endswith(opt) and (len(before) == len(opt) or before[-len(opt) - 1] == " "):
                keep(m.start() - 1, letter, m.start(), m.end())
                break
    # Readings without a cue word. Those of a line ("Therefore: B", "Yes, ...") skip the last line of a cut-off
    # output, like the bare last line: it may go on ("Therefore: B cells ...").
    last_line = text.rstrip().rfind("\n") + 1

    def line_read(start: int, at: int, cue_start: int) -> None:
        if complete or start < last_line:
            got = _cueless(text, at, norm_opts, valid)
            if got:
                keep(at, got[0], cue_start, got[1])

    low = text.lower()
    for m in _CONCLUDE.finditer(text):
        line_read(m.start(), m.end(), m.start())
    if _yes_no(norm_opts):
        for start in _first_and_last_line(text):
            lead = _YES_NO_START.match(text, start)
            if lead:
                line_read(start, lead.start(1), start)
    for m in _AMONG.finditer(text):
        got = _read_answer(text[m.end() : m.end() + 400], norm_opts, valid)
        if got and _picks_best(text[m.end() + got[1] : m.end() + got[1] + 200]):
            keep(m.end(), got[0], m.start(), m.end() + got[1])
    for m in _BELIEF.finditer(text):
        at = _BELIEF_LINK.match(text, m.end()).end()
        got = _cueless(text, at, norm_opts, valid)
        if got:
            keep(at, got[0], m.start(), got[1])
    for m in (_TEXT_CUE.finditer(text) if any(w in low for w in _TEXT_CUE_WORDS) else ()):
        got = _cueless(text, m.end(), norm_opts, valid)
        if got:
            keep(m.end(), got[0], m.start(), got[1])
    for m in (_HEDGE.finditer(text) if any(w in low for w in _HEDGE_WORDS) else ()):
        if m.group(0)[:1] in "iI" and not _HEDGE_CLAUSE_START.match(_clause_before(text, m.start())):
            continue  # 'Some argue it could be A or C' reports a view, the model's own conclusion starts its clause
        got = _read_answer(text[m.end() : m.end() + 400], norm_opts, valid)
        if got and got[0] == _NO_ANSWER:
            keep(m.start(), _NO_ANSWER, m.start(), m.end() + got[1])
    bare = _bare_last_line(text, norm_opts, valid) if complete else None
    if bare and text.rstrip().rfind("\n") + 1 >= echo_end:  # a last line inside the echo is the echo itself
        found.append(bare)
    return [(pos, ans) for pos, ans in found if pos >= echo_end]


_YES_NO_START = re.compile(r"[ \t>#•\-\"'“‘]*((?i:yes|no)\b)")


@lru_cache(maxsize=1024)
def _yes_no(norm_opts: tuple[tuple[str, str], ...]) -> bool:
    """True when the options hold both 'yes' and 'no' (PubMedQA-style), where 'Yes, ...' or 'No.' opening a line answers."""
    texts = [t for _, t in norm_opts]
    return texts.count("yes") == 1 and texts.count("no") == 1


def _first_and_last_line(text: str) -> list[int]:
    """Start offsets of the first and the last non-empty line (one offset when they are the same line)."""
    body = text.rstrip()
    first = len(text) - len(text.lstrip())
    if first >= len(body):
        return []
    last = body.rfind("\n") + 1
    return [first] if last <= first else [first, last]


def _cueless(text: str, at: int, norm_opts: tuple[tuple[str, str], ...], valid: str) -> tuple[str, int] | None:
    """(answer, end) for an answer read at `at` without a cue word: it must end its clause (_AFTER_OK), so
    'B is wrong', 'B cells are ...', 'C. difficile', 'B?' and a list ('B, C and D are wrong') are not answers."""
    if not _may_start_answer(text, at, norm_opts):
        return None
    got = _read_answer(text[at : at + 400], norm_opts, valid)
    if not got:
        return None
    ends = [at + got[1]]
    own = dict(norm_opts).get(got[0])
    if own and _norm(text[ends[0] : ends[0] + len(own) + 40]).startswith(own):  # 'B) Marfan syndrome': label and text
        ends.insert(0, ends[0] + _raw_end(text[ends[0] :], len(own)))
    for end in ends:
        if _AFTER_OK.match(text, end) and not _ASKS.match(text, end):
            return got[0], end
    return None


_ASKS = re.compile(r"[^.!?\n]{0,120}\?")  # 'Therefore, B is correct?' asks, it does not commit


_FIRST_WORD = re.compile(r"[\s\"'“”‘’\[{$:\-–—(]*([^\W_]+)")
_OPENERS = frozenset({"the", "a", "an", "option", "choice", "letter", "either", "i", "perhaps", "arguably", "boxed",
                      "text", "textbf", "mathrm"})


@lru_cache(maxsize=4096)
def _first_words(norm_opts: tuple[tuple[str, str], ...]) -> frozenset[str]:
    return frozenset(t.split(" ", 1)[0] for _, t in norm_opts)


def _may_start_answer(text: str, at: int, norm_opts: tuple[tuple[str, str], ...]) -> bool:
    """Cheap pre-check for _cueless: a letter, an opener ('the', 'option', 'I think') or an option's first word comes
    first ('So the contact pathway ...' after 'So' is skipped without parsing)."""
    m = _FIRST_WORD.match(text, at, at + 80)
    if not m:
        return True  # symbols ('>5', '↑'): let the parser decide
    word = _norm(m.group(1))
    return len(word) == 1 or word in _OPENERS or word in _first_words(norm_opts) or not word.isalpha()


def _picks_best(rest: str) -> bool:
    """True when what follows 'Among the options, B' chooses it ('best explains', 'is most consistent with')."""
    clause = _ASIDES.sub(" ", re.split(r"[.;?!\n]", rest, maxsplit=1)[0])
    m = _SUPERLATIVE.search(clause)
    return bool(m) and len(clause[: m.start()].split()) <= 5 and not _NEG_WORDS.search(clause[: m.end()])


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
    own = _norm(lines[-1])
    named = [k for k, t in norm_opts if t == own and not _is_letter(t)]
    if named:  # the line is one option's whole text ('Hypothyroidism', 'No.'); twin texts can't tell
        return (len(text), named[0] if len(named) == 1 and named[0] in valid else _NO_ANSWER)
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

    ``complete=False`` (the output hit max_new_tokens) drops the readings of its last line (a bare letter or option
    text, "Therefore: B", "Yes, ..."): a cut-off line is unfinished ("Therefore: B cells ..."). Readings with their
    own cue ("The answer is B", "I think it's B", "Among the options, B best ...") still count there.
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


@lru_cache(maxsize=1024)
def _line_commit_regex(opt_texts: tuple[str, ...]) -> re.Pattern[str]:
    """A conclusion line that has ended ('Therefore: B' + newline) or 'Among the options, B best ...'; cached per option set."""
    texts = "|".join(re.escape(t) for t in sorted(opt_texts, key=len, reverse=True) if not _is_letter(t))
    letter = r"(?-i:\(?[A-J]\)?)"
    answer = rf"(?:{texts}|{letter})" if texts else letter
    conclude = (rf"(?:^|(?<=\n))[ \t>#•*\-]*(?:{_CONCLUSION_WORDS})[ \t*]*(?:(?:option|choice)[ \t]+)?{answer}"
                r"[ \t*]*[.!]?[ \t*]*\n")
    among = (rf"{_AMONG.pattern}(?:(?:option|choice)[ \t]+)?{letter}[ \t]+(?:is[ \t]+(?:the[ \t]+)?)?"
             r"(?:best|most[ \t]+(?!un|in|less)\w+)(?=[\s.,;:!])")
    return re.compile(rf"{conclude}|{among}", re.IGNORECASE)


def has_committed_answer(text: str, options: Mapping[str, str]) -> bool:
    """True once `text` holds a firm commit ('The answer is C.'); a sampler stops generating there.

    Used for the label stage's votes (early stop saves tokens); evaluation generates to the end and reads the
    last commit instead (eval.sampling.stop_at_answer: false), since a model may revise its first answer.
    A letter counts only with a boundary after it, so 'The answer is A' may still become 'The answer is
    Anemia'; guesses ('I think the answer is E', "I think it's B"), quoted format examples and text inside an unclosed
    ``<think>`` do not count. A conclusion line ('Therefore: B', 'Thus, (D).') counts once its newline arrives, and
    'Among the options, B best ...' once the word after 'best' / 'most ...' begins; a bare last line ('B',
    'Hypothyroidism', 'Yes, ...') is read only at the end of an output and never stops one early.
    """
    if not text:
        return False
    text = visible_answer_text(text) or ""  # no early stop inside <think>: the thought is not an answer
    texts = tuple(unicodedata.normalize("NFKC", v).strip() for v in options.values() if isinstance(v, str) and v.strip())
    text = unicodedata.normalize("NFKC", text)
    for m in itertools.chain(_commit_regex(texts).finditer(text), _line_commit_regex(texts).finditer(text)):
        clause = _clause_before(m.string, m.start())
        line = _line_before(m.string, m.start())
        if _TENTATIVE.search(clause) or _NEGATED.search(clause) or _QUOTED.search(line):
            continue
        return True
    return False
