"""Subjects that must be refused (a phrase across two objects, a token claimed twice, a subject cut by the token
limit) and the container forms that must be read as the list they hold (a tensor, a generator), on the API and the
CLI (issue 17, items 2 and 18)."""

import numpy as np
import pytest
import torch

from ait2i.cli import main
from ait2i.subjects import Subject, prompt_tokens, resolve_subjects
from ait2i.testing import clip_tokenizer

PROMPT = "a red car and a blue bench"  # 1:a 2:red 3:car 4:and 5:a 6:blue 7:bench


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer()


# -- item 2: a phrase must be words of one object, in order; a token belongs to one subject ------------------------
@pytest.mark.parametrize(
    "subjects, phrase",
    [
        (["red car", "red bench"], "red bench"),  # the car's "red" given to the bench
        (["red car and a blue bench"], "red car and a blue bench"),  # two objects as one subject
        (["red car", "car and a blue bench"], "car and a blue bench"),  # the car's noun as the bench's attribute
        (["red bench"], "red bench"),  # the same without another subject to clash with
        (["blue red bench"], "blue red bench"),  # words out of the prompt's order
        (["car bench"], "car bench"),
    ],
)
def test_phrase_spanning_two_objects_is_refused(tok, subjects, phrase):
    with pytest.raises(ValueError) as e:
        resolve_subjects(tok, PROMPT, subjects)
    msg = str(e.value)
    assert repr(phrase) in msg  # names the offending phrase
    assert "2:red</w>" in msg and "7:bench</w>" in msg  # the prompt's tokens with their indices
    assert "one object" in msg  # and says what to do


@pytest.mark.parametrize(
    "prompt, subjects, phrase",
    [
        ("a cat and dog", ["cat dog"], "cat dog"),  # a conjunction before the noun joins two objects
        ("a red car, blue bench", ["red bench"], "red bench"),
        ("a cat on a mat", ["cat mat"], "cat mat"),
        ("cats on mats", ["cats on mats"], "cats on mats"),
        ("a red car bench", ["red bench", "car"], "red bench"),  # spans another subject's noun
    ],
)
def test_phrase_across_objects_in_other_prompts_is_refused(tok, prompt, subjects, phrase):
    with pytest.raises(ValueError, match=rf"{phrase!r}.*one object.*Tokens: 0:<\|startoftext\|>"):
        resolve_subjects(tok, prompt, subjects)


@pytest.mark.parametrize(
    "subjects, token",
    [
        ([{"tokens": [3], "attributes": [7]}, {"tokens": [7]}], 7),  # one subject's attribute, the other's noun
        (["red car", {"tokens": [7], "attributes": [2]}], 2),  # an attribute claimed by two subjects
        ([{"tokens": [3], "attributes": [3]}], 3),  # noun and attribute of the same subject
        ([[3, 3]], 3),
    ],
)
def test_token_claimed_twice_is_refused(tok, subjects, token):
    with pytest.raises(ValueError, match=rf"token {token}\b.*one subject only.*Tokens: 0:<\|startoftext\|>"):
        resolve_subjects(tok, PROMPT, subjects)


def test_valid_phrases_within_one_object_still_resolve(tok):
    assert resolve_subjects(tok, PROMPT, ["red car", "blue bench"]) == [
        Subject("red car", (3,), (2,)),
        Subject("blue bench", (7,), (6,)),
    ]
    (s,) = resolve_subjects(tok, "a red sports car and a bench", ["red car"])  # a modifier in between
    assert s.tokens == (4,) and s.attributes == (2,)
    # Two attributes joined by "and" or a comma inside one object, as benchmark subjects name them
    prompt = "a black and white cat and a smooth, cool surface"  # 2 black 3 and 4 white 5 cat ... 8 smooth 9 , 10 cool
    cat, surface = resolve_subjects(tok, prompt, ["black white cat", "smooth cool surface"])
    assert (cat.tokens, cat.attributes) == ((5,), (2, 4)) and (surface.tokens, surface.attributes) == ((11,), (8, 10))
    (yoyo,) = resolve_subjects(tok, "a child with a yo-yo", ["yo yo"])  # a hyphen inside a word
    assert (yoyo.tokens, yoyo.attributes) == ((7,), (5,))
    # the first "red car" of two: the second car's only "red" lies in the first object
    (s,) = resolve_subjects(tok, "a red sports car and a car", ["red car"])
    assert s.tokens == (4,) and s.attributes == (2,)
    a, b = resolve_subjects(tok, "a red car and a red car", ["red car#1", "red car#2"])
    assert (a.tokens, a.attributes, b.tokens, b.attributes) == ((3,), (2,), (7,), (6,))
    # explicit indices are taken as given when no token is claimed twice
    (d,) = resolve_subjects(tok, PROMPT, [{"tokens": [7], "attributes": [6]}])
    assert (d.tokens, d.attributes) == ((7,), (6,))


# -- item 18: container forms ---------------------------------------------------------------------------------------
def test_tensor_and_array_subjects_read_as_the_list_they_hold(tok):
    want = resolve_subjects(tok, PROMPT, [3, 7])
    assert [s.tokens for s in want] == [(3,), (7,)]
    assert resolve_subjects(tok, PROMPT, torch.tensor([3, 7])) == want
    assert resolve_subjects(tok, PROMPT, np.array([3, 7])) == want
    assert resolve_subjects(tok, PROMPT, [torch.tensor(3), np.int64(7)]) == want
    grouped = resolve_subjects(tok, PROMPT, torch.tensor([[2, 3], [6, 7]]))
    assert grouped == resolve_subjects(tok, PROMPT, [[2, 3], [6, 7]]) and grouped[1].tokens == (6, 7)
    d = resolve_subjects(tok, PROMPT, [{"tokens": torch.tensor([3]), "attributes": np.array([2])}])
    assert (d[0].tokens, d[0].attributes) == ((3,), (2,))
    with pytest.raises(ValueError, match=r"cannot read subject 3\.0"):
        resolve_subjects(tok, PROMPT, torch.tensor([3.0, 7.0]))
    with pytest.raises(ValueError, match="no subject given"):
        resolve_subjects(tok, PROMPT, torch.tensor([], dtype=torch.long))


def test_generator_of_subjects_is_read_once(tok):
    want = resolve_subjects(tok, PROMPT, ["red car", "blue bench"])
    assert resolve_subjects(tok, PROMPT, (s for s in ["red car", "blue bench"])) == want
    assert resolve_subjects(tok, PROMPT, iter(["red car", "blue bench"])) == want
    with pytest.raises(ValueError, match="no subject given"):
        resolve_subjects(tok, PROMPT, (s for s in []))
    with pytest.raises(ValueError, match="unordered"):
        resolve_subjects(tok, PROMPT, {"red car", "blue bench"})


def test_generate_reads_tensor_and_generator_subjects():
    import ait2i
    from ait2i.testing import tiny_sd_pipeline

    torch.set_num_threads(1)
    pipe = tiny_sd_pipeline()
    for subjects in (torch.tensor([3, 7]), (s for s in [3, 7])):
        out = ait2i.generate(pipe, PROMPT, subjects, method="none", num_inference_steps=1, output_type="latent")
        assert [s.tokens for s in out.diagnostics.subjects] == [(3,), (7,)]


def _cut_prompt(tok, tail: str) -> str:
    """A prompt whose ``tail`` ends in "surfboard" with "surf" the last token the 77-token limit keeps (75)."""
    prompt = "a cat " + "dog " * (74 - len(tok.tokenize(tail))) + tail
    assert dict(prompt_tokens(tok, prompt))[75] == "surf"
    return prompt


@pytest.mark.parametrize("tail", ["surfboard", "red surfboard"])
def test_subject_cut_in_half_by_the_token_limit_says_so(tok, tail):
    with pytest.raises(ValueError, match="beyond the text encoder's 77-token limit"):
        resolve_subjects(tok, _cut_prompt(tok, tail), [tail])


def test_word_cut_by_a_sentencepiece_limit_is_not_matched_by_its_first_half():
    from ait2i.testing import t5_tokenizer

    t5 = t5_tokenizer()
    t5.model_max_length = 8  # keeps "▁a ▁dog ▁and ▁a ▁red ▁s ur" of "... surfboard", then </s>
    prompt = "a dog and a red surfboard"
    assert [t for _, t in prompt_tokens(t5, prompt)][-3:] == ["\u2581s", "ur", "</s>"]
    with pytest.raises(ValueError, match="8-token limit.*in the middle of 'surfboard'"):
        resolve_subjects(t5, prompt, ["surfboard"])
    with pytest.raises(ValueError, match="'sur' is not in the prompt"):  # was the cut half, tokens (5, 6)
        resolve_subjects(t5, prompt, ["sur"])
    assert resolve_subjects(t5, prompt, ["dog"])[0].tokens == (1,)


# -- the CLI uses the same resolver -----------------------------------------------------------------------------
def test_cli_refuses_a_phrase_spanning_two_objects(tmp_path, capsys):
    from ait2i.testing import tiny_sd_pipeline

    torch.set_num_threads(1)
    model = tmp_path / "model"
    tiny_sd_pipeline().save_pretrained(model)
    out = tmp_path / "o.png"
    argv = ["generate", PROMPT, "--model", str(model), "--steps", "1", "--out", str(out), "--quiet"]
    assert main([*argv, "--subjects", "red car", "red bench"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # one line, after any library warnings
    assert last.startswith("ait2i: error: ") and "'red bench'" in last and "one object" in last
    assert "Traceback" not in err
    assert not out.exists()
