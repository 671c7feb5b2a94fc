"""Subjects: phrases, word pieces, occurrences, indices and the errors users get."""

import pytest

from ait2i.subjects import Subject, end_token_index, prompt_tokens, resolve_subjects
from ait2i.testing import clip_tokenizer


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer()


def test_sd_token_ids(tok):
    assert tok("a cat and a dog").input_ids == [49406, 320, 2368, 537, 320, 1929, 49407]
    assert end_token_index(tok, "a cat and a dog") == 6


def test_phrase_attribute_and_noun(tok):
    s = resolve_subjects(tok, "a red car and a blue bench", ["red car", "blue bench"])
    assert s == [Subject("red car", (3,), (2,)), Subject("blue bench", (7,), (6,))]


def test_multi_piece_word(tok):
    toks = dict(prompt_tokens(tok, "a photo of a surfboard"))
    (s,) = resolve_subjects(tok, "a photo of a surfboard", ["surfboard"])
    assert len(s.tokens) == 2 and "".join(toks[i] for i in s.tokens) == "surfboard</w>"


def test_non_contiguous_attribute(tok):
    (s,) = resolve_subjects(tok, "a red sports car", ["red car"])
    assert s.tokens == (4,) and s.attributes == (2,)


def test_repeated_word_needs_occurrence(tok):
    prompt = "a cat and a cat"
    with pytest.raises(ValueError, match="occurs 2 times.*#1"):
        resolve_subjects(tok, prompt, ["cat"])
    a, b = resolve_subjects(tok, prompt, ["cat#1", "cat#2"])
    assert a.tokens == (2,) and b.tokens == (5,)
    with pytest.raises(ValueError, match="occurrence 3"):
        resolve_subjects(tok, prompt, ["cat#3"])


def test_unknown_word_lists_tokens(tok):
    with pytest.raises(ValueError, match=r"'horse' is not in the prompt.*1:a</w>.*2:cat</w>"):
        resolve_subjects(tok, "a cat and a dog", ["horse"])


def test_indices(tok):
    s = resolve_subjects(tok, "a cat and a dog", [[2], [5]])
    assert [x.tokens for x in s] == [(2,), (5,)] and s[0].label == "cat"
    with pytest.raises(ValueError, match=r"valid indices for this prompt are 1..5"):
        resolve_subjects(tok, "a cat and a dog", [[6]])
    with pytest.raises(ValueError, match="start token"):
        resolve_subjects(tok, "a cat and a dog", [[0]])
    with pytest.raises(ValueError, match="out of range"):
        resolve_subjects(tok, "a cat and a dog", [[40]])


def test_no_subject_and_shared_tokens(tok):
    with pytest.raises(ValueError, match="no subject given"):
        resolve_subjects(tok, "a cat", [])
    with pytest.raises(ValueError, match="share token 2"):
        resolve_subjects(tok, "a cat and a dog", ["cat", [2]])


def test_textual_inversion_placeholder(tok):
    tok = clip_tokenizer()
    tok.add_tokens(["<cat-toy>", "<cat-toy>_1"])
    prompt = "a <cat-toy> <cat-toy>_1 on a bench"  # as the host expands a 2-vector placeholder
    s = resolve_subjects(tok, prompt, ["<cat-toy>", "bench"])
    toks = dict(prompt_tokens(tok, prompt))
    assert [toks[i] for i in s[0].tokens] == ["<cat-toy>", "<cat-toy>_1"]
    with pytest.raises(ValueError, match=r"placeholder '<dog-toy>' .* not loaded.*\['<cat-toy>'\]"):
        resolve_subjects(tok, prompt, ["<dog-toy>"])


def test_flat_index_list_is_one_token_per_subject_as_attend_and_excite(tok):
    # Attend-and-Excite's token_indices=[2, 5]: two subjects, "cat" and "dog" (not one subject "cat dog")
    s = resolve_subjects(tok, "a cat and a dog", [2, 5])
    assert [x.tokens for x in s] == [(2,), (5,)] and [x.label for x in s] == ["cat", "dog"]
    grouped = resolve_subjects(tok, "a photo of a surfboard and a dog", [[5, 6], [9]])
    assert [x.tokens for x in grouped] == [(5, 6), (9,)]
    assert [x.tokens for x in resolve_subjects(tok, "a cat and a dog", 5)] == [(5,)]


def test_articles_determiners_and_punctuation_are_not_subject_words(tok):
    prompt = "a cat, the red dog and this bird"
    a, b, c = resolve_subjects(tok, prompt, ["a cat,", "the red dog", "this bird"])
    toks = dict(prompt_tokens(tok, prompt))
    assert [toks[i] for i in a.tokens] == ["cat</w>"] and a.attributes == ()
    assert [toks[i] for i in b.tokens] == ["dog</w>"] and [toks[i] for i in b.attributes] == ["red</w>"]
    assert [toks[i] for i in c.tokens] == ["bird</w>"] and c.attributes == ()
    with pytest.raises(ValueError, match="names no word"):
        resolve_subjects(tok, prompt, ["the ,"])


def test_subject_beyond_truncation_says_so(tok):
    prompt = "a cat " + "and a very long description " * 20 + "and a dog"
    assert len(tok(prompt).input_ids) > 77
    with pytest.raises(ValueError, match="beyond the text encoder's 77-token limit"):
        resolve_subjects(tok, prompt, ["dog"])
    assert resolve_subjects(tok, prompt, ["cat"])[0].tokens == (2,)


def test_subject_box_is_validated_and_kept(tok):
    (s,) = resolve_subjects(tok, "a cat", [Subject("cat", (2,), box=(0.1, 0.2, 0.5, 0.6))])
    assert s.box.as_tuple() == (0.1, 0.2, 0.5, 0.6)
    (d,) = resolve_subjects(tok, "a cat", [{"tokens": [2], "box": [0, 0, 1, 1]}])
    assert d.box.as_tuple() == (0.0, 0.0, 1.0, 1.0) and d.to_dict()["box"] == [0.0, 0.0, 1.0, 1.0]
    a, b = resolve_subjects(tok, "a red car and a dog", ["red car@0.05,0.1,0.45,0.5", "dog"])
    assert a.tokens == (3,) and a.attributes == (2,) and a.box.as_tuple() == (0.05, 0.1, 0.45, 0.5) and b.box is None
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        Subject("cat", (2,), box=(0.1, 0.2, 1.5, 0.6))
    with pytest.raises(ValueError, match="x1=0.1 must be greater than x0=0.5"):
        Subject("cat", (2,), box=(0.5, 0.2, 0.1, 0.6))


def test_placeholder_not_loaded_is_named_with_the_loaded_ones(tok):
    tok = clip_tokenizer()
    with pytest.raises(ValueError, match=r"placeholder '<star>' .* not loaded .*loaded placeholders: none"):
        resolve_subjects(tok, "a red <star> and a blue square", ["<star>", "blue square"])
    tok.add_tokens(["<ring>", "<ring>_1"])
    with pytest.raises(ValueError, match=r"loaded placeholders: \['<ring>'\]"):
        resolve_subjects(tok, "a red <star>", ["red <star>"])
    assert resolve_subjects(tok, "a red <ring> <ring>_1", ["<ring>"])[0].tokens == (3, 4)
