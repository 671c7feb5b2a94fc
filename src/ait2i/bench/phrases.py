"""Rule-based noun phrases of benchmark prompts: the subjects to guide and the BLIP-VQA questions to ask.

T2I-CompBench++ asks BLIP-VQA one question per noun chunk of the prompt (spaCy ``en_core_web_sm`` in the
original scripts) and guidance needs each prompt's subjects (attribute + noun). spaCy and its model are heavy and
not on PyPI in a form we can pin, so we chunk with a few rules that fit the benchmark's prompt grammar:

* a phrase starts after a determiner (``a``, ``an``, ``the``, numbers, possessives, ...) or at the start of a
  clause (prompt start, after ``and``, ``with`` or a comma) when no determiner is there ("rubber gloves and a
  wooden table");
* it runs over the following words until a boundary: punctuation, a preposition or conjunction, a known verb, or a
  word ending in ``-ed``/``-ing`` that follows the first word ("a cat sleeping", but "a sleeping cat");
* its last word is the noun, the words before it its attributes; positional nouns ("the top of", "the left of")
  are not phrases.

The rules reproduce the intended subjects of the attribute-binding, spatial and numeracy prompts; on the long
free-form prompts (complex, non-spatial) they are a best effort, like any chunker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


DETERMINERS = _wordset(
    "a an the this that these those some many several each every another its his her their my our your "
    "one two three four five six seven eight nine ten eleven twelve"
)
BOUNDARIES = _wordset(
    """in on of at to with by for from into onto under over above below behind beside besides near next between
    inside outside through across along around against past toward towards upon among about like while which
    who whom where when and or but as than then so because after before during until without within beneath
    is are was were be been being am has have had do does did can could will would should may might must
    it they there he she we you i them him us me not no nor"""
)
#: Verbs of the benchmark prompts that do not end in -ed/-ing (those are caught by the suffix rule).
VERBS = _wordset(
    """sit sits sat lie lies lay stand stands stood hang hangs hung rest rests flow flows float floats look looks
    hold holds held read reads feature features flash shine shines shone drive drives drove fly flies flew run
    runs ran walk walks eat eats ate provide provides make makes made cover covers swim swims lead leads grow
    grows grew contain contains wear wears wore take takes took go goes went come comes came keep keeps kept
    cast casts give gives gave fill fills sing sings swing swings stretch stretches reach reaches perch perches
    lean leans leant rise rises rose shake shakes fall falls fell catch catches caught sleep sleeps slept bring
    brings brought watch watches sparkle sparkles glow glows add adds seem seems appear appears contrast
    contrasts complement complements led hidden"""
)
#: Words ending in -ing / -ed that are nouns or adjectives, not verbs.
_NOT_VERBS = _wordset(
    """ring string king wing thing ceiling painting building clothing spring swing pudding earring stocking
    sling wedding evening morning icing frosting railing siding bedding stuffing topping awning lighting
    flooring seed bed shed sled red bird meeting"""
)
#: Nouns that only locate something else ("on the top of", "on the left of").
POSITIONAL = _wordset("top bottom left right side front back middle center centre distance other rest")
_PUNCT = re.compile(r"^(.*?)([.,;:!?]+)$")


@dataclass(frozen=True)
class NounPhrase:
    """One noun phrase of a prompt.

    Args:
        determiner (`str`): the determiner before it as written ("a", "two", "the"), or "".
        words (`tuple[str, ...]`): attribute words then the noun, as written in the prompt.
        offsets (`tuple[int, ...]`): character offset of each word in the prompt.
    """

    determiner: str
    words: tuple[str, ...]
    offsets: tuple[int, ...]

    @property
    def text(self) -> str:
        """The phrase with its determiner, like a spaCy noun chunk ("a green bench")."""
        return " ".join([self.determiner, *self.words] if self.determiner else self.words)

    @property
    def subject(self) -> str:
        """Attributes and noun without the determiner ("green bench")."""
        return " ".join(self.words)


def _split_words(prompt: str) -> list[tuple[str, bool, int]]:
    """Words of the prompt, each with a flag saying that punctuation follows it, and its character offset."""
    out = []
    for m in re.finditer(r"\S+", prompt):
        raw = m.group(0)
        p = _PUNCT.match(raw)
        word, punct = (p.group(1), True) if p else (raw, False)
        if word:
            out.append((word, punct, m.start()))
        elif out:
            out[-1] = (out[-1][0], True, out[-1][2])
    return out


def _comma_after(prompt: str, word: str) -> bool:
    return f"{word}, " in prompt


def _is_verb_like(word: str) -> bool:
    w = word.lower()
    if w in VERBS:
        return True
    return len(w) > 4 and w.endswith(("ing", "ed")) and w not in _NOT_VERBS


def noun_phrases(prompt: str, max_words: int = 4) -> list[NounPhrase]:
    """The noun phrases of ``prompt`` in order (see the module docstring for the rules).

    Args:
        prompt (`str`): a benchmark prompt.
        max_words (`int`, *optional*, defaults to 4): longest phrase kept (attributes + noun); a longer run is cut
            to its last ``max_words`` words.

    Returns:
        `list[NounPhrase]`: possibly empty (e.g. a prompt of verbs only).
    """
    words = _split_words(prompt)
    phrases: list[NounPhrase] = []
    i, clause_start = 0, True
    while i < len(words):
        word, punct, _ = words[i]
        low = word.lower()
        det = ""
        if low in DETERMINERS or low.endswith(("'s", "s'")):
            det = word
            if punct:
                i, clause_start = i + 1, True
                continue
            i += 1
        elif not clause_start or low in BOUNDARIES or _is_verb_like(word):
            i += 1
            clause_start = punct or low in ("and", "with", "or")
            continue
        run: list[str] = []
        while i < len(words):
            w, p, _ = words[i]
            lw = w.lower()
            if lw in BOUNDARIES or lw in DETERMINERS or "'" in w or (run and _is_verb_like(w)):
                break
            run.append(w)
            i += 1
            if p:
                # "a long, narrow kitchen": a single adjective and a comma continue the phrase.
                nxt = words[i][0].lower() if i < len(words) else ""
                if not (
                    len(run) == 1
                    and lw not in POSITIONAL
                    and _comma_after(prompt, w)
                    and nxt
                    and nxt not in DETERMINERS
                    and nxt not in BOUNDARIES
                    and not _is_verb_like(nxt)
                ):
                    break
        clause_start = bool(run) and words[i - 1][1]
        if run and run[-1].lower() not in POSITIONAL:
            run = run[-max_words:]
            offsets = tuple(words[k][2] for k in range(i - len(run), i))
            phrases.append(NounPhrase(det, tuple(run), offsets))
    return phrases


_CLIP_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_")


def _clip_words(text: str) -> list[str]:
    """Words as CLIP's tokenizer splits them before BPE (letters, single digits, punctuation, clitics)."""
    return _CLIP_WORD.findall(text.lower())


def subjects_of(prompt: str) -> tuple[str, ...]:
    """Guidance subjects of ``prompt``: each noun phrase without its determiner ("red car"), with an occurrence
    number when :func:`ait2i.subjects.resolve_subjects` would find the phrase more than once ("red car#2").

    The occurrence is counted as the resolver counts it: whole-phrase matches first; for a phrase split by
    punctuation ("smooth, cool surface") every occurrence of the noun preceded by all the attribute words.
    """
    words = _clip_words(prompt)
    out = []
    for ph in noun_phrases(prompt):
        key = _clip_words(ph.subject)
        n = len(key)
        first = len(_clip_words(prompt[: ph.offsets[0]]))
        noun_at = len(_clip_words(prompt[: ph.offsets[-1]])) + len(_clip_words(ph.words[-1])) - 1
        starts = [s for s in range(len(words) - n + 1) if words[s : s + n] == key]
        if starts:
            ours = starts.index(first) + 1 if first in starts else 1
            count = len(starts)
        else:
            nouns = [k for k in range(len(words)) if words[k] == key[-1] and all(a in words[:k] for a in key[:-1])]
            ours = nouns.index(noun_at) + 1 if noun_at in nouns else 1
            count = len(nouns)
        out.append(f"{ph.subject}#{ours}" if count > 1 else ph.subject)
    return tuple(out)


def vqa_questions(prompt: str) -> list[str]:
    """BLIP-VQA questions of T2I-CompBench's attribute-binding metric: ``"<noun chunk>?"`` per noun phrase, then
    BLIP's question normalisation (lower case; the characters ``.!"()*#:;~`` removed; at most 50 words)."""
    out = []
    for ph in noun_phrases(prompt):
        q = re.sub(r"[.!\"()*#:;~]", "", f"{ph.text}?".lower()).rstrip(" ")
        out.append(" ".join(q.split(" ")[:50]))
    return out
