"""``ait2i bench`` end to end on tiny models saved to folders: fetch, generate (resume), score, compare."""

import json
from pathlib import Path

import pytest
import torch

from ait2i.cli.bench import main as bench

CB_DIR = Path(__file__).resolve().parents[3] / "shared" / "benchmarks" / "t2i-compbench"


@pytest.mark.skipif(not (CB_DIR / "color_val.txt").is_file(), reason="shared T2I-CompBench copies absent")
def test_fetch_command(tmp_path, capsys):
    assert bench(["fetch", "t2i-compbench", "--dest", str(tmp_path / "d"), "--base-url", CB_DIR.as_uri()]) == 0
    assert "verified" in capsys.readouterr().out
    bad = (tmp_path / "x").as_uri()
    assert bench(["fetch", "t2i-compbench", "--dest", str(tmp_path / "e"), "--base-url", bad]) == 2
    assert "could not download" in capsys.readouterr().err


def test_bench_registers_all_subcommands():
    import argparse

    from ait2i.cli.bench import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    for sub in ("fetch", "generate", "score", "compare", "shapes", "verify-chunks"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["bench", sub, "--help"])
        assert e.value.code == 0


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    from transformers import CLIPImageProcessor, CLIPProcessor

    from ait2i.testing import clip_tokenizer, tiny_clip_model, tiny_sd_pipeline

    root = tmp_path_factory.mktemp("models")
    tiny_sd_pipeline().save_pretrained(root / "sd")
    tiny_clip_model().save_pretrained(root / "clip")
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=ip, tokenizer=clip_tokenizer()).save_pretrained(root / "clip")
    return root


@pytest.mark.slow
def test_generate_resume_score_compare_commands(saved_models, tmp_path, capsys):
    torch.set_num_threads(1)
    common = ["--suite", "ane:objects", "--limit", "2", "--seeds", "0-1", "--model", str(saved_models / "sd")]
    common += ["--steps", "2", "--quiet"]
    out_a, out_b = tmp_path / "none", tmp_path / "ait2i"
    assert bench(["generate", *common, "--methods", "none", "--out", str(out_a)]) == 0
    assert "4 assigned, 0 already done, 4 generated" in capsys.readouterr().out
    assert bench(["generate", *common, "--methods", "none", "--out", str(out_a)]) == 0  # resumes: nothing to do
    assert "4 already done, 0 generated" in capsys.readouterr().out
    assert bench(["generate", *common, "--methods", "ait2i", "--set", "scale_factor=3", "--out", str(out_a)]) == 0
    capsys.readouterr()
    assert bench(["generate", *common, "--methods", "ait2i", "--out", str(out_a)]) == 2  # same label, other config
    assert "scale_factor" in capsys.readouterr().err
    assert bench(["generate", *common, "--methods", "ait2i:bogus=1", "--out", str(tmp_path / "z")]) == 2
    assert "no field 'bogus'" in capsys.readouterr().err and not (tmp_path / "z").exists()
    assert bench(["generate", *common, "--methods", "ait2i", "--out", str(out_b), "--batch-size", "1"]) == 0
    capsys.readouterr()

    clip = ["--clip-model", str(saved_models / "clip"), "--quiet", "--device", "cpu"]
    assert bench(["score", str(out_a), "--metrics", "clip", *clip]) == 0
    assert "clip_min_object" in capsys.readouterr().out
    scores = json.loads((out_a / "scores.json").read_text())
    assert set(scores["summary"]["paired"]) == {"ait2i"} and len(scores["per_image"]) == 8
    assert bench(["score", str(out_b), "--metrics", "clip", *clip]) == 0
    capsys.readouterr()
    assert bench(["compare", str(out_a), str(out_b), "--out", str(tmp_path / "cmp.md")]) == 0
    table = (tmp_path / "cmp.md").read_text()
    assert "none (none)" in table and "ait2i (ait2i)" in table and "Protocol `ane`" in table

    next(out_b.rglob("1.png")).unlink()
    assert bench(["score", str(out_b), "--metrics", "clip", *clip]) == 2
    assert "1 of 4 planned images are missing" in capsys.readouterr().err
    assert bench(["score", str(out_b), "--metrics", "clip,vqa", *clip]) == 2
    assert "do not apply" in capsys.readouterr().err


def test_the_personalization_suite_runs_only_through_its_own_command(tmp_path, capsys):
    assert bench(["generate", "--suite", "personalization", "--out", str(tmp_path / "p"), "--quiet"]) == 2
    assert "ait2i bench personalization" in capsys.readouterr().err and not (tmp_path / "p").exists()
