"""The rare-disease list E_rare (Orphanet, optionally GARD) and a tagger that finds its names in question text.

Matching runs over normalised token sequences with one token trie (leftmost-longest match), so tagging a
question costs O(tokens x longest name) however many names there are. Short names are dropped, acronyms
match case-sensitively, and a stoplist removes common diseases and everyday words that Orphanet also lists.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from medssr.data.entities import TOKEN, Entity, normalize_name, prepare_text, tokens
from medssr.records import Question, iter_jsonl

ORPHANET_FILE = "rare_disease/orphanet_diseases.jsonl.gz"
GARD_FILE = "corpus/medquad_gard_ghr.jsonl.gz"

# Orphanet disorder types that name one disorder or a named family (Clinical group: Hemophilia, Ehlers-Danlos
# syndrome, Porphyria); "Category" nodes are classification headings ("Rare genetic disease", "Syndrome with a
# Dandy-Walker malformation as a major feature") and "Particular clinical situation..." is poisoning/trauma/sepsis.
DISEASE_TYPES = ("Disease", "Malformation syndrome", "Clinical subtype", "Etiological subtype", "Histopathological subtype",
                 "Clinical group", "Clinical syndrome", "Morphological anomaly", "Biological anomaly")

# Names Orphanet (or GARD) lists that are common in the exam sets' population, or everyday words; a question
# that mentions only these is not a rare-disease question. Chosen by reading the most frequent matches over
# all benchmark and training questions (docs/data.md lists them with counts).
STOPLIST = frozenset(line.split("#")[0].strip() for line in """
# common chronic diseases (population prevalence well above 1 in 2,000, the EU rare-disease threshold)
asthma
alzheimer disease
parkinson disease
multiple sclerosis
essential tremor
restless legs syndrome
tourette syndrome
trichotillomania
burning mouth syndrome
bell palsy
benign paroxysmal positional vertigo
polycystic ovarian syndrome
polycystic ovary syndrome
diabetes mellitus type 1
graves disease
primary hyperparathyroidism
hemochromatosis
gilbert syndrome
familial hypercholesterolemia
glucose 6 phosphate dehydrogenase deficiency
g6pd deficiency
down syndrome
klinefelter syndrome
fetal alcohol syndrome
systemic lupus erythematosus
lupus
lupus nephritis
ankylosing spondylitis
sjogren syndrome
giant cell arteritis
alopecia areata
erythema multiforme
polycystic kidney disease
autosomal dominant polycystic kidney disease
barrett esophagus
macular degeneration
rheumatic fever
acute rheumatic fever
cleft palate
cleft lip and palate
cleft lip palate
polydactyly
adolescent idiopathic scoliosis
aggressive periodontitis
juvenile periodontitis
pyogenic granuloma
leukoplakia
atrial septal defect
interatrial communication
abdominal aortic aneurysm
osgood schlatter disease
hairy tongue
meconium aspiration syndrome
monoclonal gammopathy of undetermined significance
myocarditis
# common cancers and benign tumours
squamous cell carcinoma
bladder cancer
renal cell carcinoma
hepatocellular carcinoma
lung adenocarcinoma
papillary thyroid carcinoma
carcinoma of esophagus
esophageal carcinoma
hereditary breast cancer
pituitary adenoma
meningioma
# common acute or pregnancy conditions, complications and findings rather than diseases
acute respiratory distress syndrome
neonatal acute respiratory distress syndrome
hyaline membrane disease
preeclampsia
hellp syndrome
portal hypertension
hepatic encephalopathy
infectious arthritis
infective endocarditis
lead poisoning
nephrocalcinosis
microcephaly
polycythemia
rickets
exertional heat stroke
# infections with a large global burden (common in the MedMCQA/HEAD-QA populations)
tuberculosis
malaria
typhoid
typhoid fever
cholera
dengue fever
dengue virus infection
leishmaniasis
schistosomiasis
whooping cough
pertussis
scarlet fever
shigellosis
lyme disease
scrub typhus
chikungunya
# synonyms that are everyday or anatomical words, or acronyms with another common meaning
malleus
silver staining
midline heart
selects
tpha
facs
smas
""".splitlines()) - {""}

_BREAK = re.compile(r"[.,;:?!]\s|[.,;:?!]$|[\n()\[\]]")  # "22q11.2" keeps its dot; "midline. Heart" breaks
# "tetanus vaccination", "rabies immunoglobulin": the vaccine or product, not the disease
_VACCINE_WORDS = frozenset("vaccine vaccines vaccination vaccinations vaccinated toxoid booster boosters immunization immunisation "
                           "immunoglobulin antitoxin antiserum shot shots".split())
_PARENS = re.compile(r"\s*\((?:formerly|obsolete)\)|,?\s*formerly\b", re.IGNORECASE)


def _inside_compound(text: str, pos: int, before: bool) -> bool:
    """Whether a token boundary at ``pos`` is really inside a hyphen-joined word (a slash separates alternatives)."""
    if before:
        return pos >= 2 and text[pos - 1] in "-‐‑–" and text[pos - 2].isalnum()
    return pos + 1 < len(text) and text[pos] in "-‐‑–" and text[pos + 1].isalnum()


def _breaks(separator: str) -> bool:
    """Punctuation between two words that no multi-word disease name spans."""
    return bool(_BREAK.search(separator))


def is_acronym(surface: str) -> bool:
    """An abbreviation (MCCD, CADASIL, HAIR-AN, SeLECTS): no lower-case letters, or one word with 2+ capitals.

    Abbreviations are matched case-sensitively: "SeLECTS" must not match the verb "selects".
    """
    if not any(c.isalpha() for c in surface):
        return False
    if not any(c.islower() for c in surface):
        return True
    toks = tokens(surface, lower=False)
    return len(toks) == 1 and sum(c.isupper() for c in toks[0]) >= 2


def _read_raw(path: Path) -> Iterable[dict]:
    """The rows of a raw Orphanet/GARD file (records.iter_jsonl: a bad line is named), or where to look when it is missing."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (check data.raw_dir; the repository ships the real data under data/raw)")
    return (row for _, row in iter_jsonl(path))


def load_entities(raw_dir: str | os.PathLike, include_gard: bool = True, types: tuple[str, ...] = DISEASE_TYPES) -> list[Entity]:
    """E_rare: Orphanet disorders of the given types, plus GARD focus names Orphanet does not already have."""
    raw_dir = Path(raw_dir)
    entities: list[Entity] = []
    by_key: dict[str, Entity] = {}
    for r in _read_raw(raw_dir / ORPHANET_FILE):
        if r.get("disorder_type") not in types:
            continue
        e = Entity(id=f"ORPHA:{r['orphacode']}", name=r["name"], synonyms=list(r.get("synonyms") or []),
                   orphacode=str(r["orphacode"]), disorder_type=r["disorder_type"], sources=["orphanet"])
        entities.append(e)
        for s in [e.name, *e.synonyms]:
            by_key.setdefault(normalize_name(s), e)
    if include_gard:
        used_ids = {e.id for e in entities}
        for r in _read_raw(raw_dir / GARD_FILE):
            if r.get("source") != "GARD" or not r.get("focus"):
                continue
            focus = _PARENS.sub("", r["focus"]).strip()
            key = normalize_name(focus)
            if not key:
                continue
            hit = by_key.get(key)
            if hit is not None:
                if "gard" not in hit.sources:
                    hit.sources.append("gard")
                continue
            m = re.search(r"/gard/(\d+)", r.get("url") or "")
            gid = f"GARD:{m.group(1)}" if m else f"GARD:{key.replace(' ', '-')[:80]}"
            while gid in used_ids:
                gid += "+"
            used_ids.add(gid)
            e = Entity(id=gid, name=focus, sources=["gard"])
            entities.append(e)
            by_key[key] = e
    return entities


@dataclass
class Match:
    entity: Entity
    surface: str  # the matched text, as normalised tokens
    start: int  # token offsets in the tagged text
    end: int


@dataclass
class Tagger:
    """Token-trie matcher over E_rare surface forms; build it with ``build_tagger``."""

    trie: dict
    n_surfaces: int
    dropped: dict[str, int]

    def find(self, text: str) -> list[Match]:
        """Leftmost-longest, non-overlapping rare-disease mentions in ``text``.

        A match may not start or end inside a hyphenated word ("Stevens-Johnson syndrome" is not "Johnson
        syndrome", "non-Hodgkin lymphoma" is not "Hodgkin lymphoma") nor run across punctuation the name
        does not contain ("...the midline. Heart sounds..." is not "midline heart").
        """
        prepared = prepare_text(text)
        spans = [(m.start(), m.end()) for m in TOKEN.finditer(prepared)]
        orig = [prepared[a:b] for a, b in spans]
        low = [t.lower() for t in orig]
        out: list[Match] = []
        i = 0
        while i < len(low):
            best = None
            if not _inside_compound(prepared, spans[i][0], before=True):
                node, j = self.trie, i
                while j < len(low) and low[j] in node:
                    node = node[low[j]]
                    if j > i and _breaks(prepared[spans[j - 1][1]:spans[j][0]]):
                        break
                    j += 1
                    if None in node and not _inside_compound(prepared, spans[j - 1][1], before=False):
                        for entity, case_tokens in node[None]:
                            if case_tokens is None or case_tokens == orig[i:j]:
                                best = (j, entity)
                                break
            if best is not None and not (best[0] < len(low) and low[best[0]] in _VACCINE_WORDS):
                out.append(Match(best[1], " ".join(low[i:best[0]]), i, best[0]))
                i = best[0]
            else:
                i += 1
        return out

    def tag(self, text: str) -> str | None:
        """Preferred name of the first rare disease mentioned, or None."""
        found = self.find(text)
        return found[0].entity.name if found else None


def _keep_surface(surface: str, min_len: int, stoplist: frozenset[str]) -> tuple[bool, str]:
    """Whether a name is safe to match, and why not: too short, a stopword/common disease, or a short acronym."""
    key = normalize_name(surface)
    if not key:
        return False, "empty"
    if key in stoplist:
        return False, "stoplist"
    if is_acronym(surface):
        letters = sum(c.isalpha() for c in surface)
        return (letters >= 4, "short_acronym")
    if len(key.replace(" ", "")) < min_len:
        return False, "short"
    if key.isdigit():
        return False, "numeric"
    return True, ""


def build_tagger(entities: Iterable[Entity], min_len: int = 5, stoplist: Iterable[str] = STOPLIST) -> Tagger:
    """Index every kept name and synonym; acronyms keep their original-case tokens for a case-sensitive check."""
    stop = frozenset(normalize_name(s) for s in stoplist)
    trie: dict = {}
    dropped: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    n = 0
    for e in entities:
        names = [e.name, *e.synonyms]
        if normalize_name(e.name) in stop:  # a stoplisted disease loses its synonyms too
            dropped["stoplist"] = dropped.get("stoplist", 0) + len(names)
            continue
        for s in names:
            s = _PARENS.sub("", s).strip()
            ok, why = _keep_surface(s, min_len, stop)
            if not ok:
                dropped[why] = dropped.get(why, 0) + 1
                continue
            case_tokens = tokens(s, lower=False) if is_acronym(s) else None
            key = (e.id, " ".join(case_tokens) if case_tokens is not None else normalize_name(s))
            if key in seen:
                continue
            seen.add(key)
            node = trie
            for t in tokens(s):
                node = node.setdefault(t, {})
            node.setdefault(None, []).append((e, case_tokens))
            n += 1
    return Tagger(trie, n, dropped)


TAG_SCOPES = ("stem", "stem+answer", "all")


@dataclass
class RareTag:
    """The rare disease a question is about: first mention in the stem, else the answer, else another option."""

    name: str | None
    where: str | None  # "stem", "answer" or "options"
    names: list[str] = field(default_factory=list)  # every distinct disease found, in that order


def tag_question(q: Question, tagger: Tagger, scope: str = "all") -> RareTag:
    """Tag a question within ``scope``: "stem", "stem+answer", or "all" (stem and every option, as the benchmarks render it)."""
    if scope not in TAG_SCOPES:
        raise ValueError(f"tag scope must be one of {', '.join(TAG_SCOPES)}, got {scope!r}")
    parts = [("stem", q.question)]
    if scope != "stem" and q.answer in q.options:
        parts.append(("answer", q.options[q.answer]))
    if scope == "all":
        parts += [("options", v) for k, v in q.options.items() if k != q.answer]
    names: list[str] = []
    where = None
    for part, text in parts:
        for m in tagger.find(text):
            if m.entity.name not in names:
                names.append(m.entity.name)
                where = where or part
    return RareTag(names[0] if names else None, where, names)
