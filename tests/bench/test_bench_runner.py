"""The one benchmark runner: shard by prompt, kill and resume, lock, force, PNG parameter checks, protocols,
compare, the paired two-level bootstrap; a real 2-process run."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ait2i.bench import report, rundir, runner, stats
from ait2i.bench.specs import parse_methods
from ait2i.bench.suites import load_suite


class FakeGenerate:
    """A flat image whose colour encodes the seed; raises after ``fail_after`` calls (a killed run)."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = [], fail_after

    def __call__(self, pipe, prompt, subjects, method, generator, num_images_per_prompt, **kw):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        seeds = tuple(g.initial_seed() for g in generator)
        self.calls.append((method.name, prompt, seeds))
        return SimpleNamespace(images=[Image.new("RGB", (8, 8), (s * 20 % 256, 0, 0)) for s in seeds])


def _run(out, methods="none,ait2i", seeds=(0, 1, 2), suite="ane:animals", protocol="ane", **over):
    return runner.Run(
        load_suite(suite).head(2),
        parse_methods(methods),
        tuple(seeds),
        runner.resolve_protocol(protocol, "cpu", **over),
        "m",
        Path(out),
    )


def _gen(run, fake, **kw):
    return runner.generate(None, run, progress=False, generate_fn=fake, **kw)


def test_shards_by_prompt_cover_every_unit_once_and_batch_a_prompts_seeds(tmp_path):
    run = _run(tmp_path)
    units = run.units()
    assert len(units) == 2 * 2
    for n in (2, 3):
        parts = [runner.shard(units, i, n) for i in range(n)]
        assert sorted(map(repr, sum(parts, []))) == sorted(map(repr, units))
    fake = FakeGenerate()
    _gen(run, fake, rank=1, world=2)
    assert [c[2] for c in fake.calls] == [(0, 1, 2)] * 2  # one call per (method, prompt): all its seeds
    with pytest.raises(ValueError, match="shard"):
        runner.parse_shard("2/2")


def test_kill_and_resume_redoes_nothing(tmp_path):
    run = _run(tmp_path)
    killed = FakeGenerate(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        _gen(run, killed, batch_size=2)
    done = {p: p.read_bytes() for p in tmp_path.rglob("*.png")}
    assert len(done) == 3 and not list(tmp_path.rglob("*.tmp"))
    assert not list((tmp_path / rundir.LOCKS).glob("*.lock"))  # released even when killed
    again = FakeGenerate()
    rep = _gen(run, again, batch_size=2)
    assert rep.skipped == 3 and len(rep.generated) == 9 and set(again.calls).isdisjoint(killed.calls)
    assert all(p.read_bytes() == b for p, b in done.items())
    assert _gen(run, FakeGenerate()).skipped == 12


def test_lock_refuses_a_live_run_and_takes_over_a_stale_one(tmp_path, capsys):
    run = _run(tmp_path)
    locks = tmp_path / rundir.LOCKS
    locks.mkdir(parents=True)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        info = {"pid": child.pid, "host": socket.gethostname(), "since": "now"}
        (locks / "0-of-1.lock").write_text(json.dumps(info))
        with pytest.raises(ValueError, match=f"being written by another run \\(pid {child.pid}"):
            _gen(run, FakeGenerate())
        (locks / "0-of-1.lock").unlink()
        (locks / "1-of-4.lock").write_text(json.dumps(info))  # another sharding of the same folder
        with pytest.raises(ValueError, match="another run"):
            _gen(run, FakeGenerate())
        assert not list(tmp_path.rglob("*.png"))
    finally:
        child.kill()
        child.wait()
    rep = _gen(run, FakeGenerate())  # the holder is dead: its locks are stale
    assert len(rep.generated) == 12 and "stale lock" not in capsys.readouterr().err
    (locks / "0-of-1.lock").write_text(json.dumps(dict(info, pid=child.pid)))
    _gen(run, FakeGenerate())
    assert "taking over the stale lock" in capsys.readouterr().err


def test_force_regenerates_and_score_checks_png_parameters(tmp_path):
    _gen(_run(tmp_path, seeds=(0,)), FakeGenerate())
    with pytest.raises(ValueError, match="num_inference_steps"):
        _gen(_run(tmp_path, seeds=(0,), num_inference_steps=3), FakeGenerate())
    fake = FakeGenerate()
    rep = _gen(_run(tmp_path, seeds=(0,), num_inference_steps=3), fake, force=True)
    assert len(rep.generated) == 4 and rep.skipped == 0  # regenerated, not relabelled
    rows = runner.score(tmp_path, {}, progress=False)
    assert len(rows) == 4
    # an image of another run slipped in: score refuses, saying which and why
    from ait2i.io import read_png_params, save_png

    victim = next(tmp_path.rglob("0.png"))
    params = read_png_params(victim)
    save_png(Image.new("RGB", (8, 8)), victim, dict(params, seed=7))
    with pytest.raises(ValueError, match=r"not made by the run.*seed"):
        runner.score(tmp_path, {}, progress=False)
    with pytest.raises(ValueError, match="--force"):
        _gen(_run(tmp_path, seeds=(0,), num_inference_steps=3), FakeGenerate())


def test_folder_of_an_older_version_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "method": "none"}))
    with pytest.raises(ValueError, match="older ait2i bench"):
        _gen(_run(tmp_path), FakeGenerate())
    with pytest.raises(ValueError, match="older ait2i bench"):
        runner.score(tmp_path, {}, progress=False)


def test_protocols_are_recorded_and_compare_refuses_a_mismatch(tmp_path):
    p = runner.resolve_protocol("compbench", "cuda", dtype="float32")
    assert (p["scheduler"], p["num_inference_steps"], p["dtype"], p["overrides"]) == ("ddim", 30, "float32", ["dtype"])
    assert runner.PROTOCOLS["compbench"].seeds == "42-51" and runner.PROTOCOLS["ane"].seeds == "0-63"
    assert runner.resolve_protocol("ane", "cpu")["generator_device"] == "cpu"  # no CUDA: recorded fallback
    dirs = []
    for name, seeds, over in (("a", (0, 1), {}), ("b", (0, 1), {}), ("c", (0, 2), {"scheduler": "euler"})):
        run = _run(tmp_path / name, methods="none", seeds=seeds, **over)
        _gen(run, FakeGenerate())
        rows = runner.score(run.out, {}, progress=False)
        for r in rows:
            r["v"] = float(r["seed"])
        scorer = SimpleNamespace(keys=("v",), info=dict)
        report.write_scores(run.out, rows, rundir.read_manifest(run.out), {"v": scorer})
        dirs.append(run.out)
    table = report.compare(dirs[:2])
    assert "none (a)" in table and "Protocol `ane`" in table and "seeds 0-1" in table
    with pytest.raises(ValueError, match=r"protocol: .*euler.*seeds: \[0, 1\] vs \[0, 2\]"):
        report.compare(dirs)
    assert "Not made the same way" in report.compare(dirs, allow_mismatch=True)


def test_two_level_bootstrap_and_paired_differences():
    same = {(p, s): 0.5 for p in "ab" for s in range(4)}
    assert stats.summarize(same) == {"mean": 0.5, "low": 0.5, "high": 0.5, "n_images": 8, "n_prompts": 2}
    ref = {(p, s): float(s % 2) for p in "abc" for s in range(4)}
    new = {k: v + 1.0 for k, v in ref.items()}
    d = stats.paired(new, ref)
    assert (d["delta"], d["low"], d["high"], d["better"], d["n_pairs"]) == (1.0, 1.0, 1.0, 12, 12)
    # the seeds are paired: a noisy but constant shift has a zero-width interval; unpaired means would not
    s = stats.summarize(new)
    assert s["low"] < 1.5 < s["high"]
    # prompts are the clusters: a prompt-level effect widens the interval more than seed noise
    rng = np.random.default_rng(0)
    clustered = {(p, s): float(p) + 0.01 * rng.standard_normal() for p in range(6) for s in range(10)}
    lo, hi = stats.cluster_bootstrap([[clustered[(p, s)] for s in range(10)] for p in range(6)])
    assert hi - lo > 1.0
    assert stats.cluster_bootstrap([[1.0, 0.0]]) == stats.cluster_bootstrap([[1.0, 0.0]])  # seeded


@pytest.mark.slow
def test_two_real_processes_shard_by_prompt_and_cover_every_image_once(tmp_path):
    from ait2i.testing import tiny_sd_pipeline

    model = tmp_path / "tiny"
    tiny_sd_pipeline().save_pretrained(model)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [
        sys.executable,
        "-m",
        "ait2i.cli",
        "bench",
        "shapes",
        "--categories",
        "single,two",
        "--limit",
        "2",
        "--seeds",
        "0-1",
        "--methods",
        "none",
        "--model",
        str(model),
        "--steps",
        "2",
        "--workers",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = sorted(ln for ln in r.stdout.splitlines() if "assigned" in ln)
    assert [ln.split("]")[0] for ln in lines] == ["[0/2", "[1/2"]
    assert all("4 assigned, 0 already done, 4 generated" in ln for ln in lines), lines  # 2 prompts x 2 seeds each
    rows = rundir.load_rows(out)
    assert len(rows) == 8 and len({r["image"] for r in rows}) == 8
    by_prompt = {}
    for row in rows:
        by_prompt.setdefault(row["prompt"], set()).add(Image.open(out / row["image"]).info["ait2i"].count("seed"))
    assert len(by_prompt) == 4 and "clean_binding" in (out / "scores.md").read_text()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and len(rundir.load_rows(out)) == 8  # resumed: nothing redone


def test_manifest_writes_merge_under_a_lock_and_are_idempotent(tmp_path):
    """Shards starting together (here: threads, each with its own open file of the lock) merge their methods; a
    manifest that would not change is not rewritten."""
    import threading

    runs = [_run(tmp_path, methods=m, seeds=(0,)) for m in ("none", "ait2i", "attend-and-excite")]
    start = threading.Barrier(len(runs) * 4)
    errors = []

    def write(run):
        try:
            start.wait()
            rundir.write_manifest(tmp_path, run.manifest())
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(r,)) for r in runs * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    m = rundir.read_manifest(tmp_path)
    assert set(m["methods"]) == {"none", "ait2i", "attend-and-excite"}
    before = (tmp_path / rundir.MANIFEST).stat()
    rundir.write_manifest(tmp_path, runs[0].manifest())
    after = (tmp_path / rundir.MANIFEST).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)  # unchanged: not rewritten
    assert not list((tmp_path / rundir.LOCKS).glob("*.lock"))  # the manifest lock is no shard lock


def test_workers_parent_refuses_a_mismatching_folder_before_starting_workers(tmp_path, monkeypatch, capsys):
    import subprocess as sp

    from ait2i.cli.bench import main as bench

    out = tmp_path / "run"
    rundir.write_manifest(out, _run(out, methods="none", seeds=(0,), num_inference_steps=3).manifest())
    started = []
    monkeypatch.setattr(sp, "Popen", lambda *a, **k: started.append(a) or pytest.fail("a worker was started"))
    argv = ["generate", "--suite", "ane:animals", "--limit", "1", "--seeds", "0", "--methods", "none"]
    argv += ["--model", "org/model", "--device", "cpu", "--workers", "2", "--out", str(out), "--quiet"]
    assert bench(argv) == 2
    assert "holds images of a different run" in capsys.readouterr().err and not started


def test_loader_takes_bfloat16(tmp_path):
    import torch

    from ait2i.models import load_model
    from ait2i.testing import tiny_sd_pipeline

    tiny_sd_pipeline().save_pretrained(tmp_path / "tiny")
    pipe = load_model(str(tmp_path / "tiny"), "bfloat16")
    assert pipe.unet.dtype == torch.bfloat16
    protocol = runner.resolve_protocol("shapes", "cpu", dtype="bfloat16")
    assert protocol["overrides"] == ["dtype"]
    assert runner.load_pipeline(str(tmp_path / "tiny"), protocol, "cpu").unet.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="float32, float16, bfloat16"):
        load_model(str(tmp_path / "tiny"), "float64")


def test_item_generate_kwargs_reach_generate_and_are_checked_in_every_png(tmp_path):
    import dataclasses

    from ait2i.io import read_png_params

    def with_kwargs(run, kwargs):
        items = tuple(dataclasses.replace(it, generate_kwargs=kwargs) for it in run.suite.items)
        return dataclasses.replace(run, suite=dataclasses.replace(run.suite, items=items))

    seen = []

    class Recording(FakeGenerate):
        def __call__(self, *a, **kw):
            seen.append(kw.get("regional_adapters"))
            return super().__call__(*a, **kw)

    kwargs = {"regional_adapters": {"star-lora": "red star"}}
    run = with_kwargs(_run(tmp_path, methods="none", seeds=(0,)), kwargs)
    _gen(run, Recording())
    assert seen and all(s == kwargs["regional_adapters"] for s in seen)
    png = next(tmp_path.rglob("0.png"))
    assert read_png_params(png)["generate_kwargs"] == kwargs
    assert _gen(run, FakeGenerate()).skipped == len(seen)  # the same kwargs: resumed, nothing redone
    with pytest.raises(ValueError, match="generate_kwargs"):  # other kwargs: refused, not relabelled
        _gen(with_kwargs(_run(tmp_path, methods="none", seeds=(0,)), {}), FakeGenerate())


def test_personalization_regional_items_place_each_lora_on_its_subject():
    from ait2i.bench.suites import personalization as P

    plain = P.items(["star+ring-lora", "star-lora"])
    regional = P.items(["star+ring-lora", "star+ring-ti", "star-lora"], regional=True)
    assert all(not it.generate_kwargs for it in plain)
    two = [it for it in regional if it.category == "star+ring-lora"]
    assert two[0].generate_kwargs == {"regional_adapters": {"star-lora": "red star", "ring-lora": "blue ring"}}
    assert all(not it.generate_kwargs for it in regional if it.category != "star+ring-lora")  # one LoRA, or TI


def test_summaries_read_checker_scores_again_never_a_stale_checker(tmp_path):
    # rows stored by an older checker (here: edited) are read again from their PNGs by the current one
    from ait2i.bench.scorers import ShapesScorer
    from ait2i.shapes import render as R

    run = _run(tmp_path, methods="none", seeds=(0,), suite="shapes:two", protocol="shapes")
    item = run.suite.items[0]
    (c1, s1), (c2, s2) = item.data["objects"]
    image = R.render(R.Scene([R.ShapeSpec(c1, s1, 9.0, 9.0, 10.0), R.ShapeSpec(c2, s2, 22.0, 22.0, 10.0)], 40))
    (tmp_path / "x.png").parent.mkdir(parents=True, exist_ok=True)
    image.save(tmp_path / "x.png")
    stale = {"category": item.category, "index": item.index, "image": "x.png", "clean_binding": 0.0, "other": 7}
    (fresh,) = runner.rescore_rows(run, [stale], {"shapes": ShapesScorer()})
    assert fresh["clean_binding"] == 1.0 and fresh["other"] == 7  # the checker's keys only
    assert stale["clean_binding"] == 0.0  # the stored rows are not edited in place
    assert runner.rescore_rows(run, [stale], {"x": SimpleNamespace(keys=("clean_binding",))}) == [stale]
