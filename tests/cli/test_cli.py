"""The ``ait2i`` command line: tokens, generate (on a tiny pipeline saved to disk), errors and exit codes."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from ait2i.cli import main
from ait2i.cli.generate import output_paths
from ait2i.io import read_png_params
from ait2i.parsing import parse_seeds, parse_subject
from ait2i.testing import clip_tokenizer
from ait2i.tokens import token_table

PROMPT = "a red car and a blue bench"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random StableDiffusionPipeline saved in diffusers format (what --model loads)."""
    import torch

    from ait2i.testing import tiny_sd_pipeline

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("tiny-model")
    tiny_sd_pipeline().save_pretrained(d)
    return d


# -- helpers ------------------------------------------------------------------------------------------------------
def test_parse_seeds():
    assert parse_seeds("7") == [7]
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("0,2,5-6") == [0, 2, 5, 6]
    for bad in ("a", "3-1", "1-", "-1", "0,2,5-6,2"):
        with pytest.raises(ValueError, match="seed"):
            parse_seeds(bad)


def test_parse_subject():
    assert parse_subject("red car") == "red car"
    assert parse_subject("5") == [5]
    assert parse_subject("5,6") == [5, 6]
    assert parse_subject("cat#2") == "cat#2"


def test_output_paths(tmp_path):
    out = tmp_path / "img.png"
    assert output_paths(out, [3]) == [out]
    assert output_paths(out, [0, 1]) == [tmp_path / "img-0.png", tmp_path / "img-1.png"]


# -- tokens -------------------------------------------------------------------------------------------------------
def test_token_table_groups_word_pieces():
    rows = token_table(clip_tokenizer(), "a photo of a surfboard")
    assert rows == [
        (0, "<|startoftext|>", "<start>"),
        (1, "a", "a"),
        (2, "photo", "photo"),
        (3, "of", "of"),
        (4, "a", "a"),
        (5, "surf", "surfboard"),
        (6, "board", "surfboard"),
        (7, "<|endoftext|>", "<end>"),
    ]


def test_tokens_command(capsys):
    assert main(["tokens", "a photo of a surfboard"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["index", "token", "word"]
    assert lines[6].split() == ["5", "surf", "surfboard"]
    assert lines[7].split() == ["6", "board", "surfboard"]
    assert lines[8].split() == ["7", "<|endoftext|>", "<end>"]
    assert '--subjects "surfboard"' in out and "--subjects 5,6" in out


def test_tokens_command_with_model_folder(tmp_path, capsys):
    clip_tokenizer().save_pretrained(tmp_path / "tokenizer")  # the tokenizer subfolder of a diffusers folder
    assert main(["tokens", "two cats", "--model", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[2].split() == ["1", "two", "two"]


def test_tokens_command_with_a_shipped_model_name(capsys):
    assert main(["tokens", "a red circle", "--model", "shapesworld"]) == 0  # offline: the package's tokenizer
    assert capsys.readouterr().out.splitlines()[3].split() == ["2", "red", "red"]


def test_tokens_warns_on_truncation(capsys):
    assert main(["tokens", " ".join(["cat"] * 80)]) == 0
    out = capsys.readouterr().out
    assert "82 tokens" in out and "only the first 77" in out


# -- errors before any model is loaded ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--seed", "x"], "cannot read seed"),
        (["--out", "{tmp}/img.jpg"], "must be a .png"),
        (["--out", "{tmp}/missing/img.png"], "does not exist"),
        (["--attention", "{tmp}/att.jpg"], "--attention must be a .png"),
        (["--dtype", "float16", "--device", "cpu"], "float16 needs --device cuda"),
        (["--attention-steps", "0,60"], "attention-steps"),
        (["--set", "nonsense=1"], "has no field"),
        (["--set", "scale_factor=-1"], "scale_factor"),
        (["--model", "{tmp}/no-such-model"], "does not exist"),
        (["--model", "{tmp}"], "no model_index.json"),
    ],
)
def test_generate_bad_arguments_exit_2(tmp_path, capsys, extra, message):
    argv = [
        "generate",
        PROMPT,
        "--subjects",
        "car",
        "--steps",
        "2",
        "--quiet",
        "--out",
        str(tmp_path / "o.png"),
    ]
    argv += [a.format(tmp=tmp_path) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ait2i: error:") and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_argparse_errors_return_2(capsys):
    assert main(["generate", PROMPT, "--method", "magic"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--version"]) == 0


def test_unloadable_hub_model_exit_2(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never wait on the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "o.png"
    argv = ["generate", PROMPT, "--subjects", "car", "--model", "ait2i-test/no-such-model", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 2
    # (the last line: diffusers' own logging may print above it, e.g. into a stream pytest has closed)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ait2i: error: cannot load model 'ait2i-test/no-such-model'")
    assert list(tmp_path.iterdir()) == []


def test_bench_is_guarded(monkeypatch, capsys):
    """A broken `ait2i.cli.bench` costs only `ait2i bench`, never the other commands."""
    monkeypatch.setitem(sys.modules, "ait2i.cli.bench", None)  # importing it raises ImportError
    assert main(["tokens", "a cat"]) == 0
    capsys.readouterr()
    assert main(["bench", "anything"]) == 2
    assert "bench is unavailable" in capsys.readouterr().err


# -- generate on a tiny pipeline ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_generate_writes_pngs_with_metadata(tiny_model, tmp_path, capsys):
    out, att = tmp_path / "img.png", tmp_path / "att.png"
    argv = [
        "generate", PROMPT, "--subjects", "red car", "blue bench", "--method", "ait2i", "--model", str(tiny_model),
        "--seed", "0-1", "--steps", "2", "--out", str(out), "--attention", str(att), "--attention-steps", "0,1",
        "--set", "scale_factor=10", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["att-0.png", "att-1.png", "img-0.png", "img-1.png"]
    for seed in (0, 1):
        p = read_png_params(tmp_path / f"img-{seed}.png")
        for key in ("prompt", "subjects", "method", "method_config", "seed", "steps", "guidance_scale", "model",
                    "ait2i_version", "subject_tokens", "scheduler", "height", "width"):  # fmt: skip
            assert key in p, key
        assert p["prompt"] == PROMPT and p["subjects"] == ["red car", "blue bench"] and p["seed"] == seed
        assert p["method"] == "ait2i" and p["method_config"]["scale_factor"] == 10.0 and p["steps"] == 2
        assert p["model"] == str(tiny_model) and p["guidance_scale"] == 7.5
        assert p["subject_tokens"] == [
            {"label": "red car", "tokens": [3], "attributes": [2]},
            {"label": "blue bench", "tokens": [7], "attributes": [6]},
        ]
        with Image.open(tmp_path / f"img-{seed}.png") as im:
            assert im.size == (64, 64) and im.text["prompt"] == PROMPT
    a0 = np.asarray(Image.open(tmp_path / "img-0.png"))
    a1 = np.asarray(Image.open(tmp_path / "img-1.png"))
    assert not np.array_equal(a0, a1)  # each seed its own noise


@pytest.mark.slow
def test_generate_single_seed_matches_library_call(tiny_model, tmp_path, capsys):
    """The CLI's image is exactly what ``ait2i.generate`` gives for the same arguments (method none: the stock
    pipeline), so the command adds nothing but I/O."""
    import torch

    import ait2i
    from ait2i.models import load_model

    out = tmp_path / "none.png"
    argv = ["generate", PROMPT, "--method", "none", "--model", str(tiny_model), "--seed", "3", "--steps", "2",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert read_png_params(out)["method"] == "none" and read_png_params(out)["subjects"] == []
    pipe = load_model(str(tiny_model))
    pipe.set_progress_bar_config(disable=True)
    ref = ait2i.generate(pipe, PROMPT, method="none", generator=[torch.Generator().manual_seed(3)],
                         num_inference_steps=2).images[0]  # fmt: skip
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(ref))


@pytest.mark.slow
def test_generate_bad_subject_writes_nothing(tiny_model, tmp_path, capsys):
    out = tmp_path / "o.png"
    base = ["generate", PROMPT, "--model", str(tiny_model), "--steps", "2", "--out", str(out), "--quiet"]
    assert main([*base, "--subjects", "truck", "--attention", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert "truck" in err and "3:car" in err and "Traceback" not in err
    assert main(base) == 2  # no --subjects: the prompt's tokens and how to pass them
    err = capsys.readouterr().err
    assert "no --subjects given" in err and "bench" in err and "--subjects 7" in err
    assert main([*base, "--subjects", "0"]) == 2  # the start token
    assert "Traceback" not in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- the shipped ShapesWorld model (the --model default) ---------------------------------------------------------
def test_default_model_missing_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import ait2i.shapes.model

    monkeypatch.setattr(ait2i.shapes.model, "pretrained_dir", lambda: tmp_path / "absent")
    out = tmp_path / "o.png"
    assert main(["generate", "a red circle", "--subjects", "circle", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot load the shipped ShapesWorld model" in err and "--model" in err
    monkeypatch.setitem(sys.modules, "ait2i.shapes.model", None)  # an installation without it
    assert main(["generate", "a red circle", "--subjects", "circle", "--out", str(out), "--quiet"]) == 2
    assert "not available in this installation" in capsys.readouterr().err
    assert not out.exists()


def _shipped_model_present() -> bool:
    try:
        from ait2i.shapes.model import pretrained_dir

        return (pretrained_dir() / "model_index.json").is_file()
    except ImportError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _shipped_model_present(), reason="the shipped ShapesWorld model is not in this checkout")
def test_generate_with_shipped_model(tmp_path, capsys):
    out = tmp_path / "shapes.png"
    argv = ["generate", "a red circle and a blue square", "--subjects", "red circle", "blue square",
            "--steps", "3", "--out", str(out), "--attention", str(tmp_path / "att.png"), "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    p = read_png_params(out)
    assert p["model"] == "shapesworld" and p["subjects"] == ["red circle", "blue square"]
    assert (tmp_path / "att.png").exists()
