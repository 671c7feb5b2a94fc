"""The command lines refuse what they would get wrong, before any model is loaded, and lose no output (issue 17:
items 6, 7, 8, 11, 12, 16, 17 and the one error policy of docs/errors.md)."""

from __future__ import annotations

import time

import pytest

import ait2i
from ait2i import parsing
from ait2i.cli import generate as cli_generate
from ait2i.cli import main
from ait2i.io import read_png_params

PROMPT = "a red circle and a blue square"


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the command gets as far as loading a model (refusals must come first)."""

    def load_model(*a, **k):
        pytest.fail("the model was loaded before the bad input was refused")

    monkeypatch.setattr(cli_generate, "load_model", load_model)


def _argv(tmp_path, *extra, out="o.png"):
    return ["generate", PROMPT, "--subjects", "red circle", "blue square", "--steps", "2", "--quiet",
            "--out", str(tmp_path / out), *extra]  # fmt: skip


def _refused(capsys, argv, *needles) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ait2i: error:"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# -- refusals before the model is loaded ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra,needles",
    [
        # item 6: one side alone was ignored (a square image at the model's size, metadata saying otherwise)
        (["--height", "32"], ["--height", "--width", "both"]),
        (["--width", "32"], ["--height", "--width", "both"]),
        # item 7: nan/inf turned classifier-free guidance off; a negative prompt without CFG was ignored
        (["--guidance-scale", "nan"], ["--guidance-scale", "finite"]),
        (["--guidance-scale", "inf"], ["--guidance-scale", "finite"]),
        (["--true-cfg-scale", "nan"], ["--true-cfg-scale", "finite"]),
        (["--guidance-scale", "1", "--negative-prompt", "red"], ["--negative-prompt", "--guidance-scale"]),
        (["--true-cfg-scale", "1", "--negative-prompt", "red"], ["--negative-prompt", "--true-cfg-scale"]),
        # item 8: dropped without a word
        (["--attention-steps", "0"], ["--attention-steps", "--attention"]),
        (["--seed", "3,3"], ["--seed", "3", "twice"]),
        (["--seed", "0-5,4"], ["--seed", "4", "twice"]),
        # item 16
        (["--device", "tpu"], ["--device", "tpu", "cpu", "cuda"]),
        # item 17
        (["--seed", "18446744073709551616"], ["--seed", "18446744073709551615"]),
        (["--seed", "0-400000"], ["--seed", "400001 seeds", "at most"]),
        (["--attention", "{tmp}/a.png", "--attention-steps=-1"], ["--attention-steps", "-1"]),
        (["--attention", "{tmp}/a.png", "--attention-steps", "0,0"], ["--attention-steps", "twice"]),
        (["--set", "num_regions=2.5"], ["num_regions", "2.5"]),
        (["--set", "from_where=left"], ["from_where"]),
    ],
)
def test_generate_refuses_before_loading(tmp_path, capsys, no_model, extra, needles):
    _refused(capsys, _argv(tmp_path, *[a.format(tmp=tmp_path) for a in extra]), *needles)
    assert list(tmp_path.iterdir()) == []


def test_attention_without_subjects_is_refused(tmp_path, capsys, no_model):
    argv = ["generate", PROMPT, "--method", "none", "--steps", "2", "--quiet", "--out", str(tmp_path / "o.png"),
            "--attention", str(tmp_path / "a.png")]  # fmt: skip
    _refused(capsys, argv, "--attention", "--subjects")


def test_lms_without_scipy_is_refused(tmp_path, capsys, no_model, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scipy", None)  # an installation without scipy
    _refused(capsys, _argv(tmp_path, "--scheduler", "lms"), "--scheduler lms", "scipy", "pip install scipy")


def test_huge_seed_range_is_refused_quickly():
    """``--seed 0-400000`` took over a minute in the parser (quadratic de-duplication); the count is checked
    before any seed is listed, so even 2**64 seeds are refused at once."""
    t = time.perf_counter()
    for text in ("0-400000", "0-18446744073709551615", "5,0-99999"):
        with pytest.raises(ValueError, match="at most"):
            parsing.parse_seeds(text)
    assert time.perf_counter() - t < 1.0
    assert len(parsing.parse_seeds("0-99999")) == 100_000


def test_seed_range_is_what_torch_accepts():
    import torch

    from ait2i.parsing import MAX_SEED

    assert parsing.parse_seeds(str(MAX_SEED)) == [MAX_SEED]
    torch.Generator().manual_seed(MAX_SEED)  # the largest seed we accept works
    with pytest.raises(ValueError, match="out of range"):
        parsing.parse_seeds(str(MAX_SEED + 1))
    with pytest.raises(ValueError):
        torch.Generator().manual_seed(MAX_SEED + 1)  # ... and the next one is what torch refuses


def test_seeds_keep_their_order_and_refuse_repeats():
    assert parsing.parse_seeds("5,0-2,9") == [5, 0, 1, 2, 9]
    for text, seed in (("3,3", 3), ("0-3,2-5", 2), ("7,0-10", 7)):
        with pytest.raises(ValueError, match=f"seed {seed} twice"):
            parsing.parse_seeds(text)


# -- one --set parser: the CLI reads what the bench reads -------------------------------------------------------------
def test_set_reads_values_by_field_type():
    assert cli_generate.method_config("ait2i", ["from_where=up+down"]).from_where == ("up", "down")
    assert cli_generate.method_config("ait2i", ["from_where=up"]).from_where == ("up",)
    assert cli_generate.method_config("ait2i", ["scale_range=(1,0.5)"]).scale_range == (1.0, 0.5)
    assert cli_generate.method_config("ait2i", ["isolation_metric=cosine"]).isolation_metric == "cosine"
    assert cli_generate.method_config("ait2i", ["num_regions=2"]).num_regions == 2
    with pytest.raises(ValueError, match="num_regions"):
        cli_generate.method_config("ait2i", ["num_regions=2.5"])
    with pytest.raises(ValueError, match="given twice"):
        cli_generate.method_config("ait2i", ["scale_factor=10", "scale_factor=20"])


def test_bench_and_cli_share_the_parsers(tmp_path):
    import argparse

    from ait2i.bench import specs
    from ait2i.cli import bench as bench_cli

    assert specs.read_setting is parsing.read_setting and specs.parse_settings is parsing.parse_settings
    with pytest.raises(ValueError, match="method 'ait2i:scale_factor=1,scale_factor=2': 'scale_factor' given twice"):
        specs.parse_method("ait2i:scale_factor=1,scale_factor=2")
    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "shapes", "--seeds", "3,0-1", "--out", str(tmp_path / "run")])
    assert bench_cli.plan(args, "shapes:single")[0].seeds == (0, 1, 3)  # the bench's seeds: sorted
    with pytest.raises(ValueError, match="seed 0 twice"):
        parsing.parse_seeds("0,0", option="--seeds")


def test_bench_refuses_repeated_seeds(tmp_path, capsys):
    from ait2i.cli.bench import main as bench_main

    argv = ["shapes", "--seeds", "0,0", "--steps", "2", "--limit", "1", "--out", str(tmp_path / "run"), "--quiet"]
    assert bench_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ait2i: error:") and "seed 0 twice" in err
    assert not (tmp_path / "run").exists()


def test_bench_personalization_uses_the_shared_seed_parser(tmp_path, capsys):
    from ait2i.cli.bench import main as bench_main

    argv = ["personalization", "--seeds", "0-3,1", "--kinds", "base", "--out", str(tmp_path / "run"), "--quiet"]
    assert bench_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ait2i: error:") and "seed 1 twice" in err
    assert not (tmp_path / "run").exists()


# -- outputs ----------------------------------------------------------------------------------------------------------
def test_colliding_outputs_are_refused(tmp_path, capsys, no_model):
    a = str(tmp_path / "a.png")
    _refused(capsys, _argv(tmp_path, "--attention", a, out="a.png"), "a.png", "twice")
    _refused(capsys, _argv(tmp_path, "--seed", "0-1", "--attention", a, out="a.png"), "a-0.png", "twice")
    _refused(capsys, _argv(tmp_path, "--attention", str(tmp_path / "." / "a.png"), out="a.png"), "twice")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_unless_overwrite(tmp_path, capsys, no_model):
    old = tmp_path / "o-1.png"
    old.write_bytes(b"an earlier image")
    _refused(capsys, _argv(tmp_path, "--seed", "0-1"), "o-1.png", "already exist", "--overwrite")
    assert old.read_bytes() == b"an earlier image"


def test_output_that_is_a_folder_is_refused(tmp_path, capsys, no_model):
    (tmp_path / "o.png").mkdir()
    _refused(capsys, _argv(tmp_path), "o.png", "folder")
    (tmp_path / "f").write_text("a file")
    _refused(capsys, _argv(tmp_path, out="f/o.png"), "not a folder")


@pytest.mark.slow
def test_each_image_is_written_when_ready(tmp_path, capsys, monkeypatch):
    """Ctrl-C in the second batch keeps the first batch's image, complete and with its parameters."""
    real, calls = ait2i.generate, []

    def generate(*a, **k):
        calls.append(k["generator"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ait2i, "generate", generate)
    assert main(_argv(tmp_path, "--seed", "0-2", "--batch-size", "1")) == 130
    captured = capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o-0.png"]  # no temporary file left either
    assert f"wrote {tmp_path / 'o-0.png'}" in captured.out and "interrupted" in captured.err
    assert read_png_params(tmp_path / "o-0.png")["seed"] == 0


@pytest.mark.slow
def test_full_disk_keeps_the_images_written_before(tmp_path, capsys, monkeypatch):
    import errno

    real, calls = cli_generate.save_png, []

    def save_png(image, path, params):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(image, path, params)

    monkeypatch.setattr(cli_generate, "save_png", save_png)
    assert main(_argv(tmp_path, "--seed", "0-1", "--method", "none")) == 2
    err = capsys.readouterr().err  # (the last line: transformers may log above it)
    assert err.strip().splitlines()[-1].startswith("ait2i: error: No space left on device: ")
    assert "o-1.png" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o-0.png"]
    assert read_png_params(tmp_path / "o-0.png")["seed"] == 0


@pytest.mark.slow
def test_overwrite_replaces_and_says_so(tmp_path, capsys):
    out = tmp_path / "o.png"
    out.write_bytes(b"an earlier image")
    argv = _argv(tmp_path, "--overwrite", "--method", "none", "--height", "32", "--width", "48")
    assert main(argv) == 0, capsys.readouterr().err
    assert f"wrote {out} (replaced the existing file)" in capsys.readouterr().out
    p = read_png_params(out)
    assert (p["height"], p["width"]) == (32, 48)


# -- the top-level handler --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc",
    [ValueError("bad value"), TypeError("bad type"), FileNotFoundError(2, "No such file or directory", "x.json")],
)
def test_anticipated_errors_are_one_line_exit_2(monkeypatch, capsys, exc):
    def fail(args):
        raise exc

    monkeypatch.setattr("ait2i.cli.tokens.cmd_tokens", fail)
    assert main(["tokens", "a cat"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ait2i: error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    def fail(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("ait2i.cli.tokens.cmd_tokens", fail)
    with pytest.raises(ZeroDivisionError):
        main(["tokens", "a cat"])


def test_a_failed_run_is_one_line_exit_1(capsys):
    from ait2i.cli.errors import RunFailed, run_command

    def fail():
        raise RunFailed("worker 1/2 exited with status 1")

    assert run_command(fail) == 1
    assert capsys.readouterr().err == "ait2i: error: worker 1/2 exited with status 1\n"
