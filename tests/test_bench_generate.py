"""Benchmark generation: sharding, resume after a kill, corrupt files, manifests, bad input, multi-process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ait2i.bench.generation import (
    check_manifest,
    parse_shard,
    png_is_valid,
    run_generation,
    shard_items,
    work_items,
)
from ait2i.bench.suites import load_suite

STEPS = 2


def test_shards_cover_every_item_exactly_once():
    suite = load_suite("ane")
    items = work_items(suite, range(64))
    assert len(items) == 276 * 64 and len({it.path for it in items}) == len(items)
    for n in (2, 3, 7):
        shards = [shard_items(items, i, n) for i in range(n)]
        paths = [it.path for sh in shards for it in sh]
        assert sorted(paths) == sorted(it.path for it in items)  # no gap, no overlap
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # the order is fixed: the same on every process, whatever the suite object
    assert [it.path for it in work_items(load_suite("ane"), range(64))] == [it.path for it in items]


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) == (0, 1)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


@pytest.fixture(scope="module")
def pipe():
    from ait2i.testing import tiny_sd_pipeline

    torch.set_num_threads(1)
    return tiny_sd_pipeline()


def _suite():
    return load_suite("ane:animals_objects").head(2)  # "a horse with a glasses", "a bear with a glasses"


def _run(pipe, out, **kw):
    kw.setdefault("method", "none")
    return run_generation(
        pipe, _suite(), kw.pop("seeds", (0, 1, 2)), out, model="tiny", num_inference_steps=STEPS, progress=False, **kw
    )


class Killed(Exception):
    pass


@pytest.mark.slow
def test_kill_and_resume_redoes_nothing(pipe, tmp_path):
    out = tmp_path / "run"
    saved = []

    def die_after_three(path):
        saved.append(path)
        if len(saved) == 3:
            raise Killed

    with pytest.raises(Killed):
        _run(pipe, out, batch_size=2, on_saved=die_after_three)
    done = {p: (out / p).read_bytes() for p in saved}
    assert all(png_is_valid(out / p) for p in saved)
    assert not list(out.rglob("*.tmp"))
    rep = _run(pipe, out, batch_size=2)
    assert rep.assigned == 6 and rep.skipped == 3 and len(rep.generated) == 3 and not rep.regenerated
    assert set(rep.generated).isdisjoint(saved)
    assert all((out / p).read_bytes() == b for p, b in done.items())  # finished images untouched
    assert len(list(out.rglob("*.png"))) == 6
    # a third run does nothing
    rep = _run(pipe, out, batch_size=2)
    assert rep.skipped == 6 and not rep.generated

    from ait2i.metadata import read_png_params

    meta = read_png_params(out / "a bear with a glasses" / "2.png")
    assert meta["prompt"] == "a bear with a glasses" and meta["seed"] == 2
    assert meta["subjects"] == ["bear", "glasses"] and meta["method"] == "none"
    assert meta["num_inference_steps"] == STEPS and meta["model"] == "tiny"


@pytest.mark.slow
def test_corrupt_png_is_regenerated_and_reported(pipe, tmp_path, capsys):
    out = tmp_path / "run"
    _run(pipe, out, seeds=(0, 1))
    bad = out / "a horse with a glasses" / "1.png"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated
    leftover = bad.with_name(".1.png.abc123.png.tmp")
    leftover.write_bytes(b"partial")  # a temp file left by a killed write
    rep = _run(pipe, out, seeds=(0, 1))
    assert rep.regenerated == ["a horse with a glasses/1.png"] and rep.generated == rep.regenerated
    assert "corrupt" in capsys.readouterr().out
    assert png_is_valid(bad) and not leftover.exists()


@pytest.mark.slow
def test_batched_seeds_match_single_seed_images(pipe, tmp_path):
    _run(pipe, tmp_path / "b1", batch_size=1, seeds=(0, 1))
    _run(pipe, tmp_path / "b2", batch_size=2, seeds=(0, 1))
    from PIL import Image

    for seed in (0, 1):
        a = np.asarray(Image.open(tmp_path / "b1" / "a bear with a glasses" / f"{seed}.png"), dtype=int)
        b = np.asarray(Image.open(tmp_path / "b2" / "a bear with a glasses" / f"{seed}.png"), dtype=int)
        assert np.abs(a - b).max() <= 2
    a0 = np.asarray(Image.open(tmp_path / "b1" / "a bear with a glasses" / "0.png"), dtype=int)
    a1 = np.asarray(Image.open(tmp_path / "b1" / "a bear with a glasses" / "1.png"), dtype=int)
    assert np.abs(a0 - a1).mean() > 1  # different seeds, different images


@pytest.mark.slow
def test_other_method_folder_refused_unless_forced(pipe, tmp_path):
    out = tmp_path / "run"
    _run(pipe, out, seeds=(0,))
    before = sorted(p.name for p in out.rglob("*"))
    manifest = (out / "manifest.json").read_text()
    with pytest.raises(ValueError, match="method"):
        _run(pipe, out, seeds=(0,), method="attend-and-excite")
    assert sorted(p.name for p in out.rglob("*")) == before and (out / "manifest.json").read_text() == manifest
    with pytest.raises(ValueError, match="num_inference_steps"):
        run_generation(pipe, _suite(), (0,), out, method="none", model="tiny", num_inference_steps=3, progress=False)
    rep = _run(pipe, out, seeds=(0,), method="attend-and-excite", force=True)
    assert rep.skipped == 2  # forced: existing images are kept, the manifest now names the new method
    assert json.loads((out / "manifest.json").read_text())["method"] == "attend-and-excite"


def test_manifest_merges_plans_of_compatible_runs(tmp_path):
    from ait2i.bench.generation import build_manifest, write_json_atomic
    from ait2i.config import get_config

    cfg = get_config("none")
    common = {"num_inference_steps": 2, "guidance_scale": 7.5, "height": None, "width": None, "dtype": "float32"}
    m1 = build_manifest(load_suite("ane:animals").head(3), (0, 1), "m", cfg, **common)
    write_json_atomic(tmp_path / "manifest.json", m1)
    m2 = check_manifest(tmp_path, build_manifest(load_suite("ane:objects"), (5,), "m", cfg, **common))
    assert m2["plan"] == {"animals": [0, 1], "objects": [5]}
    assert m2["prompt_limit"] == {"animals": 3, "objects": None}
    m3 = check_manifest(tmp_path, build_manifest(load_suite("ane:animals"), (2,), "m", cfg, **common))
    assert m3["plan"]["animals"] == [0, 1, 2] and m3["prompt_limit"]["animals"] is None
    with pytest.raises(ValueError, match="model"):
        check_manifest(tmp_path, build_manifest(load_suite("ane:animals"), (0,), "other", cfg, **common))


def _bench_cli(*args):
    from ait2i.bench.cli import main

    return main(list(args))


def test_cli_bad_input_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert _bench_cli("generate", "--suite", "ane:dogs", "--model", "x", "--out", str(out)) == 2
    assert "unknown category" in capsys.readouterr().err
    assert (
        _bench_cli(
            "generate", "--suite", "ane", "--model", str(tmp_path / "no-model"), "--out", str(out), "--steps", "2"
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "could not load the model" in err and not out.exists()
    assert _bench_cli("generate", "--suite", "ane", "--method", "magic", "--model", "x", "--out", str(out)) == 2
    assert "unknown method" in capsys.readouterr().err and not out.exists()
    assert (
        _bench_cli(
            "generate", "--suite", "t2i-compbench:color", "--model", "x", "--out", str(out), "--data-dir", str(tmp_path)
        )
        == 2
    )
    assert "bench fetch" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_two_process_torchrun_covers_every_image_once(tmp_path):
    """A real 2-process launch (torchrun, CPU, gloo): every (prompt, seed) written exactly once."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    from ait2i.testing import tiny_sd_pipeline

    model = tmp_path / "tiny-model"
    tiny_sd_pipeline().save_pretrained(model)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29500 + os.getpid() % 1000),
        "-m",
        "ait2i.bench",
        "generate",
        "--suite",
        "ane:animals",
        "--limit",
        "2",
        "--seeds",
        "0-2",
        "--method",
        "none",
        "--model",
        str(model),
        "--out",
        str(out),
        "--steps",
        str(STEPS),
        "--batch-size",
        "2",
        "--quiet",
    ]
    r = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if "assigned" in ln]
    assert sorted(ln.split("]")[0] for ln in lines) == ["[0/2", "[1/2"]
    assert all("3 assigned" in ln and "3 generated" in ln for ln in lines), lines
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    expected = sorted(it.path for it in work_items(load_suite("ane:animals").head(2), (0, 1, 2)))
    assert pngs == expected and all(png_is_valid(out / p) for p in pngs)
    # the scorer agrees that nothing is missing
    from ait2i.bench.scoring import planned_items, read_manifest

    assert sorted(it.path for it in planned_items(read_manifest(out))) == expected
    assert Path(out / "manifest.json").is_file()
