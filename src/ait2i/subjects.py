"""Subjects: which tokens of the prompt each guided subject owns (docs/method.md, "Hosts and methods").

A subject is a noun (every word piece of it, e.g. CLIP's "surf" + "board") and, optionally, attribute words bound
to it ("red" in "a red car"). Users name subjects as phrases of the prompt (``"red car"``: the last word is the
noun, the words before it are its attributes), as explicit token indices, or as textual-inversion placeholders. A
word that occurs more than once needs an occurrence number: ``"cat#2"`` is the second "cat".

Where the prompt's tokens sit and how word pieces mark words depend on the text encoder (:class:`TokenLayout`,
read from the tokenizer by :func:`token_layout`): CLIP's BPE has a start token at 0 and marks word *ends* with
``"</w>"``; T5's SentencePiece has no start token (the first prompt token is at 0) and marks word *starts* with
``"▁"``. Both end the prompt with an end token (``</s>`` for T5) followed by padding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .boxes import Box, parse_box, split_box_spec

#: Where CLIP's end-of-word marker sits on a BPE piece.
_EOW = "</w>"
#: SentencePiece's word-start marker (T5, Metaspace pre-tokenizers).
SENTENCEPIECE_MARKER = "\u2581"


@dataclass(frozen=True)
class TokenLayout:
    """Where a text encoder's prompt tokens sit in its sequence, and how its word pieces mark words.

    Args:
        first (`int`, *optional*, defaults to 1): index of the first prompt token (1 after CLIP's start token; 0
            for T5, which has none). The end token follows the prompt's last token; padding follows it.
        marker (`str`, *optional*, defaults to `"</w>"`): the word-boundary marker of the pieces.
        marker_starts_word (`bool`, *optional*, defaults to `False`): the marker starts a word (SentencePiece's
            ``"▁"``) rather than ending one (CLIP's ``"</w>"``).
        keys_after_end (`bool`, *optional*, defaults to `True`): whether the denoiser attends to the keys after the
            end token (CLIP's padding is attended; a pipeline that masks the padding out, as PixArt does with T5,
            is ``False``). The losses' ``"all"`` span stops after the end token when ``False``.
    """

    first: int = 1
    marker: str = _EOW
    marker_starts_word: bool = False
    keys_after_end: bool = True


#: CLIP's layout (Stable Diffusion): start token at 0, ``"</w>"`` word ends, padding attended.
CLIP_LAYOUT = TokenLayout()


def token_layout(tokenizer) -> TokenLayout:
    """The :class:`TokenLayout` of ``tokenizer``, read from how it tokenizes a probe text.

    ``first`` is where the probe's own tokens start among the tokens the encoder sees (after any start token);
    the marker is ``"▁"`` when pieces start with it (SentencePiece), else CLIP's ``"</w>"``.
    """
    probe = "a photo"
    plain = list(tokenizer(probe, add_special_tokens=False).input_ids)
    full = list(tokenizer(probe).input_ids)
    first = next((k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain), 1)
    if any(p.startswith(SENTENCEPIECE_MARKER) for p in tokenizer.tokenize(probe)):
        return TokenLayout(first=first, marker=SENTENCEPIECE_MARKER, marker_starts_word=True)
    return TokenLayout(first=first)


class EndToken(int):
    """The end token's index (an ``int``) carrying the encoder's :class:`TokenLayout` to the losses.

    :func:`end_token_index` returns a plain ``int`` for CLIP's layout and an ``EndToken`` for any other, so that
    ``loss(raw, subjects, eot_index)`` knows where the prompt's tokens start and which keys are attended.
    """

    layout: TokenLayout

    def __new__(cls, index: int, layout: TokenLayout = CLIP_LAYOUT):
        self = super().__new__(cls, index)
        self.layout = layout
        return self

    def __reduce__(self):
        return EndToken, (int(self), self.layout)

    def __repr__(self) -> str:
        return f"EndToken({int(self)}, first={self.layout.first})"

    __str__ = int.__repr__  # messages print the index


def layout_of(eot_index) -> TokenLayout:
    """The :class:`TokenLayout` an end-token index carries (CLIP's for a plain ``int``)."""
    return getattr(eot_index, "layout", CLIP_LAYOUT)


@dataclass(frozen=True)
class Subject:
    """One guided subject.

    Args:
        label (`str`): how the user named it ("red car"), used in diagnostics and pictures.
        tokens (`tuple[int, ...]`): indices into the 77-token sequence of the noun's word pieces (start token = 0).
        attributes (`tuple[int, ...]`): indices of the attribute words' pieces bound to this subject.
        box (`Box`, *optional*): where the subject should be, normalised ``(x0, y0, x1, y1)`` in [0, 1], origin
            top-left (a 4-sequence or ``"x0,y0,x1,y1"`` is converted and validated, see
            :func:`ait2i.boxes.parse_box`); read by layout methods (``uses_boxes``).
        data (`Mapping[str, Any]`, *optional*): any other per-subject data a third-party method reads.
    """

    label: str
    tokens: tuple[int, ...]
    attributes: tuple[int, ...] = ()
    box: Box | None = None
    data: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.box is not None:
            object.__setattr__(self, "box", parse_box(self.box))

    def to_dict(self) -> dict:
        """JSON view: label, tokens, attributes, and the box / data when given."""
        out = {"label": self.label, "tokens": list(self.tokens), "attributes": list(self.attributes)}
        if self.box is not None:
            out["box"] = list(self.box.as_tuple())
        if self.data:
            out["data"] = dict(self.data)
        return out


@dataclass(frozen=True)
class _Word:
    text: str  # the word as the tokenizer spells it (lower-cased, pieces joined)
    pieces: tuple[str, ...]
    indices: tuple[int, ...]  # positions in input_ids (start token = 0)
    key: tuple[str, ...] = ()  # what phrase words are matched on (the pieces when empty)

    @property
    def match(self) -> tuple[str, ...]:
        return self.key or self.pieces


def prompt_tokens(tokenizer, prompt: str) -> list[tuple[int, str]]:
    """``(index, token)`` for every token the text encoder sees, start and end tokens included (no padding)."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    return list(enumerate(tokenizer.convert_ids_to_tokens(ids)))


def end_token_index(tokenizer, prompt: str, layout: TokenLayout | None = None) -> int:
    """Index of the end-of-text token of ``prompt`` in the padded sequence (``first`` + number of prompt tokens).

    A plain ``int`` for CLIP's layout, else an :class:`EndToken` carrying ``layout`` (default: the tokenizer's).
    """
    index = len(prompt_tokens(tokenizer, prompt)) - 1
    layout = token_layout(tokenizer) if layout is None else layout
    return index if layout == CLIP_LAYOUT else EndToken(index, layout)


def format_tokens(tokenizer, prompt: str) -> str:
    """One line listing the prompt's tokens with their indices, for error messages."""
    return ", ".join(f"{i}:{tok}" for i, tok in prompt_tokens(tokenizer, prompt))


def _is_word_end(tokenizer, piece: str) -> bool:
    return piece.endswith(_EOW) or piece in tokenizer.get_added_vocab()


def _words(tokenizer, pieces: list[str], first_index: int, layout: TokenLayout = CLIP_LAYOUT) -> list[_Word]:
    """Group BPE pieces into words: a word ends at a piece carrying ``</w>`` or at an added (placeholder) token."""
    if layout.marker_starts_word:
        return _sentencepiece_words(tokenizer, pieces, first_index, layout.marker)
    words, cur, idx = [], [], []
    for k, p in enumerate(pieces):
        cur.append(p)
        idx.append(first_index + k)
        if _is_word_end(tokenizer, p):
            words.append(_Word("".join(x.removesuffix(_EOW) for x in cur), tuple(cur), tuple(idx)))
            cur, idx = [], []
    if cur:  # truncated mid-word
        words.append(_Word("".join(x.removesuffix(_EOW) for x in cur), tuple(cur), tuple(idx)))
    return words


def _sentencepiece_words(tokenizer, pieces: list[str], first_index: int, marker: str) -> list[_Word]:
    """Group SentencePiece pieces into words: a word starts at a piece carrying ``marker`` (``"▁"``), at an added
    token, after an added token, and where the pieces turn from letters/digits to punctuation or back (T5 glues
    "." to "dog" in "a dog."). Words are matched on their text, not their pieces."""
    added = tokenizer.get_added_vocab()

    def kind(piece: str):  # None: the bare marker (belongs to the word it starts)
        bare = piece.replace(marker, "")
        return any(ch.isalnum() for ch in bare) if bare else None

    words: list[_Word] = []
    cur: list[str] = []
    idx: list[int] = []
    cur_kind = None

    def flush():
        text = "".join(x.replace(marker, "") for x in cur)
        words.append(_Word(text, tuple(cur), tuple(idx), key=(text,)))

    for k, p in enumerate(pieces):
        pk = kind(p)
        new = p.startswith(marker) or p in added or (cur and cur[-1] in added)
        new = new or (pk is not None and cur_kind is not None and pk != cur_kind)
        if new and cur:
            flush()
            cur, idx, cur_kind = [], [], None
        cur.append(p)
        idx.append(first_index + k)
        cur_kind = pk if pk is not None else cur_kind
    if cur:
        flush()
    return words


def _placeholder_vectors(tokenizer, word: str) -> list[str]:
    """Multi-vector textual-inversion placeholders: ``<cat>`` also owns ``<cat>_1``, ``<cat>_2``, ... if loaded."""
    added = tokenizer.get_added_vocab()
    out, k = [], 1
    while f"{word}_{k}" in added:
        out.append(f"{word}_{k}")
        k += 1
    return out


def _prompt_words(tokenizer, prompt: str, truncate: bool = True) -> list[_Word]:
    if truncate:
        ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    else:
        ids = tokenizer(prompt, truncation=False).input_ids
    layout = token_layout(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(ids)[layout.first : -1]  # drop start / end tokens
    return _words(tokenizer, pieces, first_index=layout.first, layout=layout)


#: Words that are never part of a subject: articles and determiners (a phrase "a cat" names the cat).
DETERMINERS = frozenset(
    "a an the this that these those some any each every either neither another such no my your his her its our "
    "their".split()
)


#: Words that join or relate two objects ("a red car and a blue bench", "a cat on a mat"): never a word of one
#: subject. Between two attributes of one object a conjunction or comma may be skipped ("black and white cat" is
#: named "black white cat"; "a smooth, cool surface" is "smooth cool surface").
CONJUNCTIONS = frozenset("and or nor but plus & versus vs".split())
PREPOSITIONS = frozenset(
    "of on in at by with without under over above below behind beside near from into onto inside outside between "
    "among against beneath atop around across along through toward towards upon within underneath".split()
)
_JOINERS = CONJUNCTIONS | PREPOSITIONS
#: Punctuation inside a word ("yo-yo", "t-shirt"), skipped between any two words of a phrase.
_IN_WORD = frozenset("- / '".split())


def _is_subject_word(w: _Word) -> bool:
    """Articles, determiners and punctuation ("a", "the", ",") are not words of a subject."""
    return w.text.lower() not in DETERMINERS and any(ch.isalnum() for ch in w.text)


def _phrase_words(tokenizer, phrase: str) -> list[_Word]:
    layout = token_layout(tokenizer)
    return [w for w in _words(tokenizer, tokenizer.tokenize(phrase), 0, layout) if _is_subject_word(w)]


_OCCURRENCE = re.compile(r"^(.*?)#(\d+)$")

#: What a subject phrase must be, said in every refusal of a phrase.
_ONE_OBJECT = (
    "A subject is the words of one object in the prompt's order: its noun last, its attributes before it (e.g. "
    "'red car' in 'a red car and a blue bench'); name one subject per object, or pass token indices as "
    "{'tokens': [...], 'attributes': [...]} (see `ait2i tokens`)."
)


def _span_problem(words: list[_Word], picked: list[int]) -> str | None:
    """Why the prompt words at positions ``picked`` (increasing, the noun last) are not one object, else None.

    A skipped word may be a modifier ("sports" in "red sports car"), a hyphen inside a word ("yo-yo"), or a
    conjunction or punctuation directly between two picked attributes ("black and white cat", "smooth, cool
    surface"); a determiner, a preposition or any other conjunction or punctuation starts or relates another
    object.
    """
    chosen = set(picked)
    attributes = set(picked[:-1])
    for j in range(picked[0] + 1, picked[-1]):
        if j in chosen:
            continue
        text = words[j].text.lower()
        if text in _IN_WORD and j - 1 in chosen and j + 1 in chosen:  # "yo-yo"
            continue
        joiner = text in CONJUNCTIONS or not any(ch.isalnum() for ch in text)
        if joiner and j - 1 in attributes and j + 1 in attributes:
            continue
        if joiner or text in DETERMINERS or text in PREPOSITIONS:
            return words[j].text
    return None


def _candidates(words: list[_Word], keys: list) -> tuple[list[list[_Word]], list[tuple[list[_Word], str]]]:
    """Where the phrase ``keys`` (match keys, the noun last) occurs in ``words``: ``(matches, across)``.

    Contiguous occurrences first ("red car" in "a red car"); if none, the noun with its attributes in order before
    it, each the nearest such word ("red car" in "a red sports car"), kept when they lie in one object
    (:func:`_span_problem`) and listed in ``across`` with the word that separates them otherwise.
    """
    n = len(keys)
    contiguous = [words[s : s + n] for s in range(len(words) - n + 1) if [w.match for w in words[s : s + n]] == keys]
    if contiguous:
        return contiguous, []
    matches, across = [], []
    for k in (k for k, w in enumerate(words) if w.match == keys[-1]):
        picked = [k]
        for key in reversed(keys[:-1]):
            prev = [j for j in range(picked[0]) if words[j].match == key]
            if not prev:
                break
            picked.insert(0, prev[-1])
        if len(picked) < n:
            continue
        problem = _span_problem(words, picked)
        if problem is None:
            matches.append([words[j] for j in picked])
        else:
            across.append(([words[j] for j in picked], problem))
    return matches, across


def _resolve_phrase(tokenizer, prompt: str, words: list[_Word], spec: str, full: list[_Word] | None = None) -> Subject:
    """One phrase subject; ``words`` are the words the encoder sees, ``full`` the untruncated prompt's when the
    prompt is truncated (a word cut in half by the limit is left out of ``words``)."""
    m = _OCCURRENCE.match(spec.strip())
    phrase, occurrence = (m.group(1).strip(), int(m.group(2))) if m else (spec.strip(), None)
    tokens_line = f"Tokens: {format_tokens(tokenizer, prompt)}"
    want = _phrase_words(tokenizer, phrase)
    if not want:
        raise ValueError(
            f"subject {spec!r} names no word (articles, determiners and punctuation are not subject words); name "
            f"a word of the prompt. {tokens_line}"
        )
    joiners = [w.text for w in want if w.text.lower() in _JOINERS]
    if joiners:
        parts, cur = [], []
        for w in want:
            if w.text.lower() in _JOINERS:
                parts, cur = parts + [" ".join(cur)] * bool(cur), []
            else:
                cur.append(w.text)
        parts += [" ".join(cur)] * bool(cur)
        raise ValueError(
            f"subject {phrase!r} contains {joiners[0]!r}, which joins or relates two objects, so it is not one "
            f"object: name one subject per object (here {', '.join(repr(p) for p in parts)}). Two attributes of "
            f"one object are named without the conjunction ('black white cat' for 'a black and white cat'). "
            f"{_ONE_OBJECT} {tokens_line}"
        )
    keys = [w.match for w in want]
    matches, across = _candidates(words, keys)
    beyond = not (matches or across) and full is not None and any(_candidates(full, keys))
    if not matches and across and not beyond:
        got, problem = across[0]
        where = ", ".join(f"{w.text!r} (token {w.indices[0]})" for w in got)
        raise ValueError(
            f"subject {phrase!r} does not name one object of the prompt {prompt!r}: its words {where} are "
            f"separated by {problem!r}, so they belong to different objects. {_ONE_OBJECT} {tokens_line}"
        )
    if beyond:
        *_, (last, piece) = prompt_tokens(tokenizer, prompt)[:-1]  # the last token the encoder sees
        split = full[len(words)] if len(full) > len(words) and full[len(words)].indices[0] <= last else None
        where = f" in the middle of {split.text!r}" if split is not None else ""
        raise ValueError(
            f"subject {phrase!r} lies beyond the text encoder's {tokenizer.model_max_length}-token limit: the "
            f"prompt is truncated after token {last} ({piece!r}){where}, so the model never sees it. Shorten the "
            "prompt or move the subject earlier."
        )
    if not matches:
        in_prompt = {w.match for w in (full or words)}
        order = " (its words are in the prompt, but not in this order)" if all(k in in_prompt for k in keys) else ""
        raise ValueError(
            f"subject {phrase!r} is not in the prompt {prompt!r}{order}. Its tokens are: "
            f"{format_tokens(tokenizer, prompt)}. Name words of the prompt, or pass token indices (see `ait2i "
            f"tokens`). {_ONE_OBJECT}"
        )
    if occurrence is None and len(matches) > 1:
        raise ValueError(
            f"subject {phrase!r} occurs {len(matches)} times in the prompt {prompt!r}; say which with "
            f"{phrase!r}#1 ... #{len(matches)}. {tokens_line}"
        )
    if occurrence is not None and not 1 <= occurrence <= len(matches):
        if full is not None and len(_candidates(full, keys)[0]) >= occurrence:
            raise ValueError(
                f"subject {spec!r}: occurrence {occurrence} of {phrase!r} lies beyond the text encoder's "
                f"{tokenizer.model_max_length}-token limit, so the model never sees it. Shorten the prompt."
            )
        raise ValueError(
            f"subject {spec!r}: occurrence {occurrence} asked, but {phrase!r} occurs {len(matches)} time(s) in "
            f"{prompt!r}. {tokens_line}"
        )
    chosen = matches[(occurrence or 1) - 1]
    noun, attrs = chosen[-1], chosen[:-1]
    tokens = list(noun.indices)
    # A multi-vector placeholder is expanded in the prompt by the host ("<cat>" -> "<cat> <cat>_1 ..."): the
    # following vector tokens belong to the same concept.
    extra = _placeholder_vectors(tokenizer, noun.text)
    if extra:
        pos = words.index(noun)
        for j, name in enumerate(extra, start=1):
            if pos + j < len(words) and words[pos + j].text == name:
                tokens.extend(words[pos + j].indices)
    return Subject(label=phrase, tokens=tuple(tokens), attributes=tuple(i for a in attrs for i in a.indices))


def _check_indices(tokenizer, prompt: str, indices, eot: int, what: str) -> tuple[int, ...]:
    out = []
    first = layout_of(eot).first
    for i in _index_list(indices):
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"{what}: token indices must be ints, got {i!r}")
        if not first <= i <= eot - 1:
            ends = f"0 is the start token, {eot} the end token" if first == 1 else f"{eot} is the end token"
            raise ValueError(
                f"{what}: token index {i} is out of range; valid indices for this prompt are {first}..{eot - 1} "
                f"({ends}). Tokens: {format_tokens(tokenizer, prompt)}"
            )
        out.append(i)
    if not out:
        raise ValueError(f"{what}: empty list of token indices")
    return tuple(out)


#: A textual-inversion placeholder as users write it: ``<star>``, ``<cat-toy>``.
_PLACEHOLDER_RE = re.compile(r"<[^<>\s|]+>")


def loaded_placeholders(tokenizer) -> list[str]:
    """The textual-inversion placeholders loaded in ``tokenizer`` (multi-vector extras ``<x>_1`` left out)."""
    added = [t for t in tokenizer.get_added_vocab() if not t.startswith("<|")]
    return sorted(t for t in added if not re.search(r"_\d+$", t) or t.rsplit("_", 1)[0] not in added)


def check_placeholders(tokenizer, prompt: str, subjects=()) -> None:
    """Refuse a prompt or subject phrase naming a ``<placeholder>`` the tokenizer has not loaded.

    Without this, an unloaded ``"<star>"`` is read by CLIP as the plain pieces ``<``, ``star``, ``>``: the concept is
    silently missing and the subject resolves to the word "star".

    Raises:
        ValueError: naming the unknown placeholder and the loaded ones.
    """
    added = set(tokenizer.get_added_vocab())
    texts = [prompt] + [s for s in subject_list(subjects) if isinstance(s, str)]
    for text in texts:
        for name in _PLACEHOLDER_RE.findall(text):
            if name not in added:
                loaded = loaded_placeholders(tokenizer)
                raise ValueError(
                    f"placeholder {name!r} (in {text!r}) is not loaded in this pipeline's tokenizer; loaded "
                    f"placeholders: {loaded or 'none'}. Load it first, e.g. pipe.load_textual_inversion(path, "
                    f"token={name!r}) or ait2i.shapes.concept.load_concept(pipe, folder, 'ti')."
                )


def _index_list(value) -> list:
    """Token indices as a list of Python values: a tensor or array (``.tolist()``), one index, or a sequence."""
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    if isinstance(value, (int, float, str)):
        return [value]
    return [v.tolist() if hasattr(v, "tolist") else v for v in value]


def subject_list(subjects) -> list:
    """The user's subjects as a list, read once: one subject (a phrase, an index, a dict, a :class:`Subject`) is
    a list of one; a tensor or array is the (nested) list it holds (``torch.tensor([3, 7])`` is ``[3, 7]``); an
    iterator or generator is read into a list; ``None`` is ``[]``.

    Raises:
        ValueError: an unordered set (the order of the subjects is their order in the diagnostics and pictures) or
            something that is no subject.
    """
    if subjects is None:
        return []
    if isinstance(subjects, (str, Subject, Mapping, int)):
        return [subjects]
    if hasattr(subjects, "tolist") and not isinstance(subjects, (list, tuple)):  # torch / numpy
        value = subjects.tolist()
        return value if isinstance(value, list) else [value]
    if isinstance(subjects, (set, frozenset)):
        raise ValueError(
            f"subjects {subjects!r} is an unordered set; pass a list (its order is the subjects' order in the "
            "diagnostics and pictures)"
        )
    if not isinstance(subjects, Iterable):
        raise ValueError(f"cannot read subjects {subjects!r}: give a list of phrases, token indices or Subjects")
    return [s.tolist() if hasattr(s, "tolist") and not isinstance(s, (list, tuple)) else s for s in subjects]


def _check_ownership(tokenizer, prompt: str, out: list[Subject], phrased: set[int]) -> None:
    """Refuse a token claimed twice (by two subjects, or as one subject's noun and attribute) and a phrase whose
    words span another subject's token ("red bench" over the "car" of "a red car bench")."""
    owner: dict[int, str] = {}
    pieces = dict(prompt_tokens(tokenizer, prompt))
    rule = (
        "a token belongs to one subject only, once: as its noun or as one of its attributes. "
        f"Tokens: {format_tokens(tokenizer, prompt)}"
    )
    for k, s in enumerate(out):
        for t in (*s.tokens, *s.attributes):
            if t in owner:
                piece = f"token {t} ({pieces.get(t)!r})"
                if owner[t] == k:
                    raise ValueError(f"subject {s.label!r} lists {piece} twice; {rule}")
                raise ValueError(f"subjects {out[owner[t]].label!r} and {s.label!r} share {piece}; {rule}")
            owner[t] = k
    for k in sorted(phrased):
        s = out[k]
        own = (*s.tokens, *s.attributes)
        inside = [t for t in range(min(own), max(own)) if owner.get(t, k) != k]
        if inside:
            other = out[owner[inside[0]]].label
            raise ValueError(
                f"subject {s.label!r} spans token {inside[0]} ({pieces.get(inside[0])!r}) of subject {other!r}, so "
                f"its words are not one object. {_ONE_OBJECT} Tokens: {format_tokens(tokenizer, prompt)}"
            )


def resolve_subjects(tokenizer, prompt: str, subjects) -> list[Subject]:
    """Turn the user's subject specification into :class:`Subject` objects.

    Args:
        tokenizer: the pipeline's tokenizer (CLIP: placeholders of loaded textual inversions included; T5's
            SentencePiece works too: its :class:`TokenLayout` is read from it).
        prompt (`str`): the prompt as the text encoder sees it (after textual-inversion expansion).
        subjects (`list`): each item a phrase (``"red car"``, ``"cat#2"``; articles, determiners and punctuation
            are not subject words; ``"red car@0.1,0.2,0.5,0.6"`` adds a box), a token index (``[2, 5]`` is two
            subjects of one token each, as Attend-and-Excite's ``token_indices``), a list of token indices (one
            subject's noun pieces: ``[[2, 3], [5]]``), a dict ``{"tokens": [...], "attributes": [...], "label":
            ..., "box": ...}`` or a :class:`Subject`. A tensor, array, iterator or generator is read as the list
            it holds (:func:`subject_list`). A phrase is the words of one object in the prompt's order, its noun
            last: a modifier between them is skipped ("red car" in "a red sports car"), and so is a conjunction or
            comma between two attributes ("black white cat" in "a black and white cat"); a determiner, a
            preposition or a conjunction between them means two objects and is refused.

    Returns:
        `list[Subject]`, in the order given.

    Raises:
        ValueError: no subject, an unknown or ambiguous word, a phrase across two objects, an index out of range
            or on the start/end token, a token claimed twice (by two subjects, or as noun and attribute), a subject
            beyond the text encoder's token limit.
    """
    subjects = subject_list(subjects)
    if not subjects:
        raise ValueError(
            f"no subject given; name the words to guide, e.g. subjects=['cat', 'red bench']. "
            f"Tokens of the prompt: {format_tokens(tokenizer, prompt)}"
        )
    check_placeholders(tokenizer, prompt, [s for s in subjects if isinstance(s, str)])
    eot = end_token_index(tokenizer, prompt)
    words = _prompt_words(tokenizer, prompt)
    full = None
    if len(tokenizer(prompt, truncation=False).input_ids) > tokenizer.model_max_length:  # truncated
        full = _prompt_words(tokenizer, prompt, truncate=False)
        if words and words[-1].pieces != full[len(words) - 1].pieces:  # the last word is cut in half: unseen
            words = words[:-1]
    out: list[Subject] = []
    phrased: set[int] = set()
    for spec in subjects:
        if isinstance(spec, Subject):
            s = Subject(
                spec.label,
                _check_indices(tokenizer, prompt, spec.tokens, eot, spec.label),
                _check_indices(tokenizer, prompt, spec.attributes, eot, spec.label) if spec.attributes else (),
                spec.box,
                spec.data,
            )
        elif isinstance(spec, str):
            phrase, box = split_box_spec(spec)
            s = _resolve_phrase(tokenizer, prompt, words, phrase, full)
            phrased.add(len(out))
            if box is not None:
                s = Subject(s.label, s.tokens, s.attributes, box)
        elif isinstance(spec, Mapping):
            toks = _check_indices(tokenizer, prompt, spec.get("tokens", ()), eot, "subject")
            attrs = _index_list(spec.get("attributes", ()))
            attrs = _check_indices(tokenizer, prompt, attrs, eot, "subject attributes") if attrs else ()
            unknown = sorted(set(spec) - {"tokens", "attributes", "label", "box", "data"})
            if unknown:
                raise ValueError(
                    f"subject {spec!r}: unknown key(s) {unknown}; use tokens, attributes, label, box, data"
                )
            label = spec.get("label") or _label(tokenizer, prompt, toks)
            s = Subject(label, toks, attrs, spec.get("box"), spec.get("data") or {})
        elif isinstance(spec, (list, tuple)):
            toks = _check_indices(tokenizer, prompt, list(spec), eot, f"subject {list(spec)}")
            s = Subject(_label(tokenizer, prompt, toks), toks)
        elif isinstance(spec, int) and not isinstance(spec, bool):
            toks = _check_indices(tokenizer, prompt, [spec], eot, f"subject {spec}")
            s = Subject(_label(tokenizer, prompt, toks), toks)
        else:
            raise ValueError(f"cannot read subject {spec!r}: give a phrase, token indices or a Subject")
        out.append(s)
    _check_ownership(tokenizer, prompt, out, phrased)
    return out


def _label(tokenizer, prompt: str, indices) -> str:
    toks = dict(prompt_tokens(tokenizer, prompt))
    return "".join(toks[i] for i in indices).replace(token_layout(tokenizer).marker, " ").strip()
