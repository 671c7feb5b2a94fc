"""Make ``tests/data/t5-tokenizer``: a tiny SentencePiece-style (Unigram, Metaspace "▁") T5 tokenizer, offline.

Test data for the PixArt host (``tests/test_host_pixart.py``): T5's token layout (word starts marked "▁", no start
token, ``</s>`` after the prompt, ``<pad>`` after it) without downloading T5's 32k-piece model. The Unigram model is
trained with ``tokenizers`` on a few hundred captions made here from fixed word lists (ShapesWorld-style captions
and common caption words, deterministic: no randomness), then wrapped as a ``T5TokenizerFast`` whose vocabulary
starts ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 as T5's does (no sentinel ``<extra_id_*>`` tokens: none needed).

Rerun from the repository root (the output is deterministic for a given ``tokenizers`` version)::

    python tests/data/make_t5_tokenizer.py

Made with tokenizers 0.23 and transformers 5.24. Words the training text holds rarely ("surfboard", "skateboard",
"giraffe") are split into several pieces, which the tests use as multi-piece words.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

OUT = Path(__file__).resolve().parent / "t5-tokenizer"
VOCAB_SIZE = 200

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown", "gray"]
SHAPES = ["circle", "square", "triangle", "star", "rectangle", "ellipse"]
NOUNS = ["car", "bench", "cat", "dog", "bird", "horse", "bowl", "apple", "chair", "table", "bear", "ball", "cup"]
PLACES = ["left", "right", "top", "bottom", "middle", "corner"]
TEMPLATES = [
    "a {c1} {s1} and a {c2} {s2}",
    "a {c1} {s1} to the {p} of a {c2} {s2}",
    "a photo of a {c1} {n1} and a {c2} {n2}",
    "the {c1} {n1} is next to the {c2} {n2}",
    "a {c1} {n1} on a {c2} {n2} in the {p}",
    "two {c1} {s1}s and a {c2} {n1}",
]
#: Rare words (a few captions each), so that the trained vocabulary splits them into pieces.
RARE = ["surfboard", "skateboard", "giraffe", "hydrant", "umbrella"]


def captions() -> list[str]:
    out = []
    pairs = list(itertools.permutations(COLORS, 2))
    for k, ((c1, c2), shift) in enumerate(itertools.product(pairs, (0, 3))):
        t = TEMPLATES[(k + shift) % len(TEMPLATES)]
        s1, s2 = SHAPES[k % len(SHAPES)], SHAPES[(k * 5 + 1) % len(SHAPES)]
        n1, n2 = NOUNS[k % len(NOUNS)], NOUNS[(k * 7 + 3) % len(NOUNS)]
        out.append(t.format(c1=c1, c2=c2, s1=s1, s2=s2, n1=n1, n2=n2, p=PLACES[k % len(PLACES)]))
    for k, word in enumerate(RARE):
        out.append(f"a {COLORS[k]} {word} next to a {NOUNS[k]}")
    out += ["a cat and a dog.", "a red car, a blue bench.", "an old man with a hat", "a board and a surf shop"]
    return out


def main() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    special = ["<pad>", "</s>", "<unk>"]
    # 1. The pieces: BPE with Metaspace "▁" (tokenizers' Unigram trainer prunes a corpus this small to single letters).
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=special, min_frequency=3)
    corpus = captions()
    bpe.train_from_iterator(corpus, trainer=trainer)
    # 2. The Unigram scores: log-probability of each piece in the BPE segmentation of the corpus (add-one smoothed),
    # one EM step of a Unigram model on these pieces.
    counts = Counter(p for text in corpus for p in bpe.encode(text).tokens)
    pieces = sorted((p for p in bpe.get_vocab() if p not in special), key=lambda p: (-counts[p], p))
    total = sum(counts[p] + 1 for p in pieces)
    vocab = [(s, 0.0) for s in special] + [(p, math.log((counts[p] + 1) / total)) for p in pieces]
    t5 = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)
    OUT.mkdir(exist_ok=True)
    t5.save_pretrained(OUT)
    print(f"{len(t5)} tokens -> {OUT}")
    for text in ["a red car", "a surfboard and a giraffe", "a cat and a dog."]:
        print(text, "->", t5.convert_ids_to_tokens(t5(text).input_ids))


if __name__ == "__main__":
    main()
