"""Rule-based RareDis-Sub categories: keyword cues on the sentence that asks the question.

The seven categories follow ReDis-QA, whose questions come from the sections of a NORD disease report
(Symptoms, Causes, Affected populations, Related disorders, Diagnosis, Standard therapies) plus Others.
Rules are tried in order on the question's focus sentence (the last sentence with a '?', else the last
sentence), so a vignette's "presents with" does not outvote "What is the most appropriate treatment?".
"""

from __future__ import annotations

import re
from collections.abc import Callable

from medssr.records import CATEGORIES, Question


def _rx(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.IGNORECASE)


# (category, cue) in priority order; the first cue found in the focus sentence wins.
RULES: list[tuple[str, re.Pattern[str]]] = [
    ("Related disorders", _rx(r"\bdifferential\b", r"\bdistinguish", r"\bconfused with\b", r"\bmimic")),
    ("Diagnosis", _rx(r"\bmost (?:likely|probable) diagnos", r"\bdiagnosis (?:is|was)\b", r"^\W*diagnosis\b",
                      r"\bwhat(?:'s| is) the diagnosis")),
    ("Treatment", _rx(r"\btreat", r"therap", r"\bmanag", r"\bdrugs? of choice\b", r"\bnext (?:best )?step\b", r"\bmedications?\b",
                      r"surg(?:ery|ical)\b", r"\beffective (?:for|in|against)\b", r"\bprevent", r"\bprophyla", r"\bvaccin",
                      r"\badminister", r"\bregimens?\b", r"\bintervention\b", r"\bcure\b", r"\bpharmacolog", r"\bimprov",
                      r"\brelie[fv]", r"\balleviat", r"\bused (?:for|in)\b", r"\bshould be given\b", r"\b(?:side|adverse) effects?\b",
                      r"\breplacement\b", r"\badjuvant\b", r"\boperat")),
    ("Causes", _rx(r"\bcaus", r"\betiolog", r"\baetiolog", r"\bmutat", r"\bgenes?\b", r"\bgenetic", r"\binherit", r"pathogen",
                   r"\bmechanism", r"\bdefect", r"\bdeficien", r"\bunderlying\b", r"\brisk factors?\b", r"\bpredispos", r"\bdue to\b",
                   r"\bresults? (?:in|from)\b", r"\bexpla(?:in|nation)", r"\baccounts? for\b", r"\bunderl(?:ie|y)", r"\bmolecular\b",
                   r"\bnucleotide", r"\bchromosom", r"\bdeletion", r"\benzymes?\b", r"\bencod", r"\bresponsible\b", r"\btransmi",
                   r"\bcontribut", r"\bpathophysiolog", r"\bderived from\b", r"\bexpos", r"\baris(?:e|es|ing)\b", r"\boriginat")),
    ("Diagnosis", _rx(r"\bdiagnos", r"\bconfirm", r"\btests?\b", r"\bscreen", r"\binvestigation", r"\bimaging\b", r"\bbiops",
                      r"\bmarkers?\b", r"\bdetect", r"\bmost consistent with\b", r"\bidentif", r"\blaboratory\b", r"\bcriteria\b",
                      r"\bmost likely (?:condition|disease|disorder)\b", r"\bsuffering from\b", r"\blikely (?:possibility|to be)\b",
                      r"\bthis condition is\b", r"\bknown as\b")),
    ("Symptoms", _rx(r"\bsymptom", r"\bsigns?\b", r"\bpresents? with\b", r"\bpresentation", r"\bfindings?\b", r"\bfeatures?\b",
                     r"\bmanifest", r"\bcharacteri[sz]", r"\bseen in\b", r"\bcomplication", r"\bclinical picture\b", r"\bpresent\b",
                     r"\bdevelop", r"\bexhibit", r"\b(?:is|are) found in\b", r"\boccurs? in\b", r"\bseen with\b", r"\braised in\b")),
    ("Affects", _rx(r"\baffect", r"\bprevalen", r"\bincidence\b", r"\bpopulation", r"\bepidemiolog",
                    r"\bmost common(?:ly)? (?:in|among|seen in)\b", r"\bage group", r"\bethnic", r"\bwhich organs?\b", r"\bfrequen",
                    r"\bwho (?:is|are)\b", r"\bgender\b", r"\bsex\b", r"\binvolved in\b")),
    ("Related disorders", _rx(r"\bassociat", r"\brelat", r"\blinked\b", r"\boverlap", r"\bco-?occur", r"\bcoexist",
                              r"\bwhich of the following (?:disorders|conditions|diseases|syndromes)\b", r"\bsame as\b", r"\bsimilar\b",
                              r"\bvariant\b", r"\bsubtypes?\b", r"\bclassif")),
]

CategoryClassifier = Callable[[Question], str]

_SENTENCE = re.compile(r"(?<=[.?!])\s+|\n+")


def focus_sentence(stem: str) -> str:
    """The sentence that asks: the last one containing '?', else the last sentence."""
    parts = [p.strip() for p in _SENTENCE.split(stem.strip()) if p.strip()]
    if not parts:
        return stem
    asks = [p for p in parts if "?" in p]
    return asks[-1] if asks else parts[-1]


def classify_text(stem: str) -> str:
    """Category of a question stem by the ordered keyword rules; 'Others' when none applies."""
    focus = focus_sentence(stem)
    for category, cue in RULES:
        if cue.search(focus):
            return category
    return "Others"


def classify_category(q: Question) -> str:
    """The rule-based classifier with the ``CategoryClassifier`` signature (an LLM classifier can replace it)."""
    category = classify_text(q.question)
    assert category in CATEGORIES
    return category
