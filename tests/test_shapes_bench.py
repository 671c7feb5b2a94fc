"""The ShapesWorld benchmark: prompts, method parsing, statistics, resume, and a smoke run on a tiny pipeline."""

import importlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ait2i.config import AIT2IConfig, AttendExciteConfig, NoGuidanceConfig
from ait2i.shapes import bench as B
from ait2i.shapes.check import DetectedObject, match

R = importlib.import_module("ait2i.shapes.render")  # the package re-exports a function named render

# -- statistics -------------------------------------------------------------------------------------------------


def test_wilson_interval_known_values():
    lo, hi = B.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1.96**2 / (10 + 1.96**2), abs=1e-9)  # 0.2775
    lo, hi = B.wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = B.wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.2775, abs=1e-4)
    lo, hi = B.wilson_interval(81, 263)  # asymmetric case: the centre is pulled toward 1/2
    assert lo == pytest.approx(0.2553, abs=1e-3) and hi == pytest.approx(0.3662, abs=1e-3)
    assert B.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        B.wilson_interval(3, 2)


def test_bootstrap_interval():
    v = [0.0] * 50 + [1.0] * 50
    lo, hi = B.bootstrap_interval(v)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.96 * 0.05, abs=0.03)
    assert B.bootstrap_interval(v) == (lo, hi)  # seeded
    assert B.bootstrap_interval([0.5, 0.5]) == (0.5, 0.5)


def _d(color, shape, noise=False):
    return DetectedObject(color, shape, (0, 0, 5, 5), 25, noise)


def _row(method, category, detections, requested):
    return {"method": method, "category": category, **match(detections, requested)}


def test_summary_arithmetic_on_hand_made_detections():
    req = [("red", "circle"), ("blue", "square")]
    rows = [
        _row("m", "two", [_d("red", "circle"), _d("blue", "square")], req),  # exact
        _row("m", "two", [_d("blue", "circle"), _d("red", "square")], req),  # swapped colours
        _row("m", "two", [_d("red", "circle")], req),  # neglect
        _row("m", "two", [_d("red", "circle"), _d("blue", "square"), _d("green", "circle")], req),  # extra
        _row("m", "single", [_d("red", "circle", noise=True)], [("red", "circle")]),  # noise only: missing
        _row("m", "single", [_d("red", "circle")], [("red", "circle")]),
    ]
    s = B.summarize(rows)["m"]
    two = s["two"]
    assert two["n"] == 4
    assert two["object_recall"]["value"] == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert two["all_present"]["count"] == 3 and two["all_present"]["value"] == 0.75
    assert two["exact_binding"]["count"] == 2
    assert two["extra_objects"]["count"] == 1
    lo, hi = B.wilson_interval(2, 4)
    assert (two["exact_binding"]["low"], two["exact_binding"]["high"]) == (lo, hi)
    assert s["single"]["exact_binding"]["value"] == 0.5
    assert s["all"]["n"] == 6 and s["all"]["exact_binding"]["count"] == 3
    # clean binding: exact and nothing else (the exact image with an extra object does not count)
    assert two["clean_binding"]["count"] == 1 and s["single"]["clean_binding"]["count"] == 1
    assert s["all"]["clean_binding"]["count"] == 2
    assert (two["clean_binding"]["low"], two["clean_binding"]["high"]) == B.wilson_interval(1, 4)
    # a mixed object (one shape in two colours) is neither requested object
    mixed = DetectedObject("red", "circle", (0, 0, 5, 5), 25, leaked_colors=("blue",))
    row = _row("m", "two", [mixed, _d("blue", "square")], req)
    assert (row["exact_binding"], row["clean_binding"], row["all_present"]) == (False, False, True)
    # rows written before clean binding existed: derived from exact binding and extra objects
    old = [{k: v for k, v in r.items() if k != "clean_binding"} for r in rows]
    assert B.summarize(old) == B.summarize(rows)
    table = B.markdown_table(B.summarize(rows))
    assert "| two | m | 4 | 0.875 [" in table and "| single | m | 2 |" in table
    assert table.splitlines()[0].endswith("| extra objects | clean binding |")
    two_line = next(line for line in table.splitlines() if line.startswith("| two | m |"))
    assert two_line.split("|")[-2].strip().startswith("0.250 [")  # clean binding 1/4, the last column


# -- prompts and methods ----------------------------------------------------------------------------------------


def test_prompt_categories():
    prompts = B.shapes_prompts(per_category=12)
    assert prompts == B.shapes_prompts(per_category=12)  # fixed
    assert [p.text for p in B.shapes_prompts(["two"], 4)] == [p.text for p in prompts if p.category == "two"][:4]
    by = {c: [p for p in prompts if p.category == c] for c in B.CATEGORIES}
    for cat, ps in by.items():
        assert len(ps) == 12 and len({p.text for p in ps}) == 12, cat
        for p in ps:
            colors, shapes = [c for c, _ in p.objects], [s for _, s in p.objects]
            assert len(set(colors)) == len(colors)
            assert p.text == R.caption_of(p.subjects)
            held = [o for o in p.objects if o in R.HELD_OUT]
            assert len(held) == (1 if cat in ("held_out", "three_held_out") else 0)
            assert len(p.objects) == (1 if cat == "single" else 3 if cat.startswith("three") else 2)
            if cat in ("two", "held_out"):
                assert len(set(shapes)) == 2
            if cat in ("same_shape", "three_same_shape"):
                assert len(set(shapes)) == 1
        if cat == "three_held_out":  # the held-out object's position rotates
            assert {[o in R.HELD_OUT for o in p.objects].index(True) for p in ps} == {0, 1, 2}
    with pytest.raises(ValueError, match="unknown categories"):
        B.shapes_prompts(["four"])
    with pytest.raises(ValueError, match="1..12"):
        B.shapes_prompts(per_category=13)


def test_method_overrides_are_typed():
    ((label, cfg),) = B.parse_methods("ait2i:w_isolation=0")
    assert label == "ait2i:w_isolation=0" and isinstance(cfg, AIT2IConfig) and cfg.w_isolation == 0.0
    assert cfg.w_aggregation == AIT2IConfig().w_aggregation
    ((_, cfg),) = B.parse_methods("ait2i:aggregation_metric=cosine,isolation_metric=cosine")
    assert (cfg.aggregation_metric, cfg.isolation_metric) == ("cosine", "cosine")
    ((_, cfg),) = B.parse_methods("ait2i:refinement={0:0.05,10:0.5,20:0.8}")
    assert cfg.refinement == {0: 0.05, 10: 0.5, 20: 0.8}
    ((_, cfg),) = B.parse_methods("attend-and-excite:refinement=none,max_guided_steps=0.5")
    assert isinstance(cfg, AttendExciteConfig) and cfg.refinement == {} and cfg.max_guided_steps == 0.5
    ((_, cfg),) = B.parse_methods("ait2i:max_guided_steps=10,from_where=up+down+mid,scale_range=(1.0,0.25)")
    assert cfg.max_guided_steps == 10 and isinstance(cfg.max_guided_steps, int)
    assert cfg.from_where == ("up", "down", "mid") and cfg.scale_range == (1.0, 0.25)
    ((_, cfg),) = B.parse_methods("ait2i:attn_res=none")
    assert cfg.attn_res is None


def test_method_lists_and_sets():
    methods = B.parse_methods("none,ait2i:w_isolation=0,w_presence=0,attend-and-excite")
    assert [m for m, _ in methods] == ["none", "ait2i:w_isolation=0,w_presence=0", "attend-and-excite"]
    assert isinstance(methods[0][1], NoGuidanceConfig)
    assert (methods[1][1].w_isolation, methods[1][1].w_presence) == (0.0, 0.0)
    ablation = B.parse_methods("ablation")
    assert len(ablation) == 8 and ablation[0][0] == "ait2i"
    configs = [json.dumps(B._config_dict(c), sort_keys=True) for _, c in ablation]
    assert len(set(configs)) == 8  # every variant differs from the others
    assert B.parse_methods(["none", "ait2i"]) == B.parse_methods("none,ait2i")
    assert len({B.method_dir(m) for m, _ in ablation}) == 8


def test_common_overrides():
    methods = B.parse_methods("none,attend-and-excite,ait2i:max_guided_steps=10", "max_guided_steps=0.5,w_presence=0")
    (_, none), (_, ane), (_, ait) = methods
    assert none.max_guided_steps == 0  # never guided
    assert ane.max_guided_steps == 0.5  # A&E has no w_presence: that key is skipped for it
    assert (ait.max_guided_steps, ait.w_presence) == (10, 0.0)  # the method's own setting wins
    with pytest.raises(ValueError, match="apply to none of the guided methods"):
        B.parse_methods("none,attend-and-excite", "w_isolation=0")
    with pytest.raises(ValueError, match="common override on 'ait2i'"):
        B.parse_methods("ait2i", "w_isolation=x")
    with pytest.raises(ValueError, match="is not key=value"):
        B.parse_methods("ait2i", "w_isolation")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ait2i:w_isolaton=0", r"no setting 'w_isolaton'; valid settings: .*w_isolation"),
        ("ait2i:w_isolation=abc", r"cannot read w_isolation='abc': expected a value of type float"),
        ("ait2i:aggregation_metric=manhattan", "aggregation_metric must be one of"),
        ("ait2i:w_presence=-1", "w_presence must be a finite number >= 0"),
        ("ait2i:refinement=[1,2]", "cannot read refinement"),
        ("ait2i:w_isolation", "is not key=value"),
        ("ait2i:", "nothing after ':'"),
        ("dalle", "unknown method 'dalle'"),
        ("w_isolation=0", "must follow a method name"),
        ("ait2i,ait2i", "listed twice"),
        ("ait2i:refinement={0:0.05", "unbalanced brackets"),
        ("none:w_isolation=0", "none has no setting 'w_isolation'"),
        ("", "no method given"),
    ],
)
def test_method_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        B.parse_methods(spec)


def test_parse_seeds():
    assert B.parse_seeds("0-3") == [0, 1, 2, 3]
    assert B.parse_seeds("7,1,3-4,3") == [1, 3, 4, 7]
    for bad in ("", "a", "5-2", "-1", "1-"):
        with pytest.raises(ValueError):
            B.parse_seeds(bad)


# -- runs with a fake generator ---------------------------------------------------------------------------------


class FakeGenerate:
    """Renders the requested objects (seed-dependent layout); drops the last object for odd seeds under
    ``"none"``; raises after ``fail_after`` calls to simulate a killed run."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = [], fail_after

    def __call__(self, pipe, prompt, subjects, method, generator, num_images_per_prompt, **kw):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        assert len(generator) == num_images_per_prompt
        seeds = [g.initial_seed() for g in generator]
        self.calls.append((method.name, prompt, tuple(seeds)))
        images = []
        for s in seeds:
            objs = [tuple(x.split()) for x in subjects]
            if method.name == "none" and s % 2 == 1 and len(objs) > 1:
                objs = objs[:-1]
            scene = R.sample_scene(s, len(objs), [c for c, _ in objs], [sh for _, sh in objs])
            images.append(R.render(scene))
        return SimpleNamespace(images=images, diagnostics=None)


def _run(tmp_path, fake, **kw):
    args = {
        "methods": "none,ait2i",
        "seeds": "0-4",
        "out_dir": tmp_path,
        "batch_size": 2,
        "categories": ["single", "two"],
        "prompts_per_category": 2,
        "progress": False,
        "generate_fn": fake,
        "model": "fake",
    }
    args.update(kw)
    return B.run_benchmark(None, **args)


def test_run_metrics_and_files(tmp_path):
    fake = FakeGenerate()
    s = _run(tmp_path, fake)
    # 2 methods x 4 prompts x ceil(5 / 2) = 3 batches
    assert len(fake.calls) == 24 and {c[2] for c in fake.calls} == {(0, 1), (2, 3), (4,)}
    assert s["ait2i"]["two"]["exact_binding"]["value"] == 1.0
    assert s["ait2i"]["all"]["extra_objects"]["value"] == 0.0
    # none drops the second object for odd seeds (1, 3 of 0-4) on two-object prompts
    assert s["none"]["two"]["all_present"]["count"] == 2 * 3 and s["none"]["two"]["n"] == 10
    assert s["none"]["two"]["object_recall"]["value"] == pytest.approx((6 + 4 * 0.5) / 10)
    assert s["none"]["single"]["exact_binding"]["value"] == 1.0
    rows = B.load_results(tmp_path)
    assert len(rows) == 40
    p = B.shapes_prompts(["single"], 1)[0]
    assert (tmp_path / "ait2i" / p.slug / "3.png").is_file()
    assert (tmp_path / "summary.md").read_text().startswith("| category | method |")
    report = json.loads((tmp_path / "summary.json").read_text())
    assert report["seeds"] == [0, 1, 2, 3, 4] and report["methods"]["ait2i"]["w_isolation"] == 2.0
    assert not list(tmp_path.rglob("*.tmp*"))


def test_resume_redoes_nothing(tmp_path):
    killed = FakeGenerate(fail_after=7)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, killed)
    first = B.load_results(tmp_path)
    assert len(first) == sum(len(c[2]) for c in killed.calls)  # every finished batch is on disk
    again = FakeGenerate()
    _run(tmp_path, again)
    assert set(again.calls).isdisjoint(killed.calls) and len(again.calls) == 24 - 7
    rows = B.load_results(tmp_path)
    keys = [(r["method"], r["prompt"], r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)) == 40
    third = FakeGenerate()
    _run(tmp_path, third)
    assert third.calls == []
    # more seeds later: only the new ones run
    more = FakeGenerate()
    _run(tmp_path, more, seeds="0-5")
    assert {c[2] for c in more.calls} == {(5,)} and len(more.calls) == 8


def test_methods_split_across_runs_are_summarised_on_paired_images(tmp_path):
    _run(tmp_path, FakeGenerate(), methods="none", seeds="0-4")  # e.g. one process per method set
    _run(tmp_path, FakeGenerate(), methods="ait2i", seeds="0-1")
    fake = FakeGenerate()
    s = _run(tmp_path, fake, methods="none,ait2i", seeds="0-4", generate=False)
    assert fake.calls == []
    assert s["none"]["all"]["n"] == s["ait2i"]["all"]["n"] == 8  # 4 prompts x seeds 0-1 done by both
    report = json.loads((tmp_path / "summary.json").read_text())
    assert report["images"] == {"planned": 40, "finished": 28, "summarised": 16, "paired": True}
    s = _run(tmp_path, FakeGenerate(), methods="none,ait2i", seeds="0-4", generate=False, paired=False)
    assert (s["none"]["all"]["n"], s["ait2i"]["all"]["n"]) == (20, 8)


def test_truncated_last_line_is_dropped(tmp_path):
    _run(tmp_path, FakeGenerate(), seeds="0-1")
    path = tmp_path / B.RESULTS
    text = path.read_text()
    path.write_text(text + text.splitlines()[0][:30])  # a write killed half-way
    assert len(B.load_results(tmp_path)) == 16
    assert path.read_text() == text
    path.write_text("{bad\n" + text)
    with pytest.raises(ValueError, match="damaged"):
        B.load_results(tmp_path)


def test_folder_of_another_run_is_refused(tmp_path):
    _run(tmp_path, FakeGenerate(), seeds="0")
    with pytest.raises(ValueError, match="num_inference_steps"):
        _run(tmp_path, FakeGenerate(), seeds="0", num_inference_steps=25)
    with pytest.raises(ValueError, match="model"):
        _run(tmp_path, FakeGenerate(), seeds="0", model="other")
    fake = FakeGenerate()
    _run(tmp_path, fake, seeds="0", num_inference_steps=25, force=True)
    # a new method label may join the folder
    _run(tmp_path, FakeGenerate(), seeds="0", methods="ait2i:w_isolation=0", num_inference_steps=25)
    assert "ait2i:w_isolation=0" in json.loads((tmp_path / B.MANIFEST).read_text())["methods"]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        _run(tmp_path, FakeGenerate(), batch_size=0)
    with pytest.raises(ValueError, match="bad seed range"):
        _run(tmp_path, FakeGenerate(), seeds="x")


def test_cli_arguments_reject_bad_methods(capsys):
    assert B.main(["--methods", "ait2i:w_isolaton=0", "--out", "unused"]) == 2
    assert "valid settings" in capsys.readouterr().err


# -- the real engine on a tiny random pipeline ------------------------------------------------------------------


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: more threads only add contention on a shared CPU
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_smoke_run_on_tiny_pipeline(tmp_path, one_thread):
    import torch

    from ait2i.testing import tiny_sd_pipeline

    torch.manual_seed(0)
    pipe = tiny_sd_pipeline()
    kw = {
        "seeds": "0-1",
        "batch_size": 2,
        "categories": ["single", "same_shape"],
        "prompts_per_category": 1,
        "num_inference_steps": 2,
        "progress": False,
        "model": "tiny",
    }
    s = B.run_benchmark(pipe, "none,ait2i", out_dir=tmp_path, **kw)
    assert set(s) == {"none", "ait2i"}
    for m in s.values():
        assert m["single"]["n"] == 2 and m["same_shape"]["n"] == 2
        for metric in B.METRICS:
            assert 0.0 <= m["all"][metric]["low"] <= m["all"][metric]["value"] <= m["all"][metric]["high"] <= 1.0
    rows = B.load_results(tmp_path)
    assert len(rows) == 8
    assert all(r["loss_first"] is not None for r in rows if r["method"] == "ait2i")
    assert np.asarray(Image.open(tmp_path / rows[0]["image"])).shape == (64, 64, 3)
    # batched seeds give the same images as one seed at a time
    s1 = B.run_benchmark(pipe, "ait2i", out_dir=tmp_path / "one", **dict(kw, batch_size=1))
    rel = next(r["image"] for r in rows if r["method"] == "ait2i" and r["seed"] == 1)
    a = np.asarray(Image.open(tmp_path / rel), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "one" / rel), dtype=np.int16)
    assert np.abs(a - b).max() <= 2
    assert s1["ait2i"]["all"]["n"] == 4


def test_model_id_names_the_weights(tmp_path):
    for name, data in (("a", b"weights"), ("b", b"weights"), ("c", b"weightz")):
        (tmp_path / name / "unet").mkdir(parents=True)
        (tmp_path / name / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(data)
    assert B.model_id(tmp_path / "a") == B.model_id(tmp_path / "b") != B.model_id(tmp_path / "c")
    with pytest.raises(ValueError, match="no"):
        B.model_id(tmp_path)


def test_default_methods_scale_attend_and_excite_windows():
    (_, none), (ae_label, ae), (_, ours) = B.parse_methods(B.DEFAULT_METHODS)
    preset = AttendExciteConfig()
    assert none.name == "none" and ours == AIT2IConfig() and ae_label.startswith("attend-and-excite:")
    # at the references' 50 steps the scaled windows are exactly the preset's
    assert ae.refinement_thresholds(50) == preset.refinement_thresholds(50) == {0: 0.05, 10: 0.5, 20: 0.8}
    assert ae.guided_steps(50) == preset.guided_steps(50) == 25
    assert ae.refinement_thresholds(20) == {0: 0.05, 4: 0.5, 8: 0.8} and ae.guided_steps(20) == 10


def test_shards_split_the_run_without_overlap(tmp_path):
    full, a, b = FakeGenerate(), FakeGenerate(), FakeGenerate()
    _run(tmp_path / "full", full)
    _run(tmp_path / "split", a, shard=(0, 2))
    assert len(B.load_results(tmp_path / "split")) < 40  # half the batches only
    s = _run(tmp_path / "split", b, shard=(1, 2))
    assert not set(a.calls) & set(b.calls) and sorted(a.calls + b.calls) == sorted(full.calls)
    rows = B.load_results(tmp_path / "split")
    assert len(rows) == 40 and len({(r["method"], r["prompt"], r["seed"]) for r in rows}) == 40
    assert s == json.loads((tmp_path / "full" / "summary.json").read_text())["summary"]
    for bad in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="shard"):
            _run(tmp_path / "bad", FakeGenerate(), shard=bad)
    assert B.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "a/b", ""):
        with pytest.raises(ValueError, match="i/n"):
            B.parse_shard(bad)


def test_worker_command_line_keeps_the_run_settings():
    import argparse

    parser = argparse.ArgumentParser()
    B.add_arguments(parser)
    argv = ["--methods", "none,ait2i:w_isolation=0", "--override", "max_guided_steps=0.4", "--seeds", "0-3"]
    argv += ["--steps", "7", "--guidance-scale", "5.5", "--batch-size", "3", "--categories", "two,three"]
    argv += ["--prompts-per-category", "2", "--model", "/m", "--scheduler", "pndm", "--force", "--out", "o"]
    argv += ["--reference", "ait2i:w_isolation=0"]
    args = parser.parse_args(argv + ["--workers", "3"])
    cmd = B._worker_argv(args, 1, 3, 2)
    assert cmd[1:3] == ["-m", "ait2i.shapes.bench"]
    worker = parser.parse_args(cmd[3:])
    assert (worker.shard, worker.threads, worker.workers, worker.no_progress) == ("1/3", 2, 1, True)
    for k, v in vars(args).items():
        if k not in ("shard", "threads", "workers", "no_progress"):
            assert getattr(worker, k) == v, k


@pytest.mark.slow
def test_two_workers_write_every_image_once(tmp_path, capsys):
    argv = ["--methods", "none", "--categories", "single", "--prompts-per-category", "1", "--seeds", "0-3"]
    argv += ["--steps", "2", "--batch-size", "1", "--workers", "2", "--no-progress", "--out", str(tmp_path)]
    assert B.main(argv) == 0
    rows = B.load_results(tmp_path)
    assert sorted(r["seed"] for r in rows) == [0, 1, 2, 3]
    assert json.loads((tmp_path / "summary.json").read_text())["images"]["finished"] == 4
    assert "| single | none | 4 |" in capsys.readouterr().out
    assert B.main(argv) == 0 and len(B.load_results(tmp_path)) == 4  # resumed: nothing redone


def _pair_row(method, prompt, seed, exact, extra=False, category="two"):
    return {
        "method": method,
        "category": category,
        "prompt": prompt,
        "seed": seed,
        "recall": 1.0 if exact else 0.5,
        "all_present": exact,
        "exact_binding": exact,
        "has_extra": extra,
    }


def test_paired_differences_by_hand():
    ref = {"p1": [1, 0, 0, 1], "p2": [0, 0, 1, 1]}
    new = {"p1": [1, 1, 1, 1], "p2": [0, 1, 1, 1]}
    rows = [_pair_row("none", p, i, bool(v), extra=True) for p, vs in ref.items() for i, v in enumerate(vs)]
    rows += [_pair_row("m", p, i, bool(v), extra=True) for p, vs in new.items() for i, v in enumerate(vs)]
    rows.append(_pair_row("m", "p1", 9, False))  # no reference image for this seed: not a pair
    d = B.paired_differences(rows, "none")
    e = d["m"]["two"]
    assert (e["n"], e["prompts"]) == (8, 2) and set(d["m"]) == {"two", "all"}
    assert e["exact_binding"]["delta"] == pytest.approx(3 / 8)
    assert (e["exact_binding"]["better"], e["exact_binding"]["worse"]) == (3, 0)
    assert e["object_recall"]["delta"] == pytest.approx(3 / 8 * 0.5)
    assert 0 <= e["exact_binding"]["low"] < 3 / 8 < e["exact_binding"]["high"] <= 1
    assert e["extra_objects"] == {"delta": 0.0, "low": 0.0, "high": 0.0, "better": 0, "worse": 0}
    # every image has an extra object: no clean binding on either side
    assert e["clean_binding"] == {"delta": 0.0, "low": 0.0, "high": 0.0, "better": 0, "worse": 0}
    assert B.paired_differences(rows, "none", seed=0) == d  # fixed seed: same intervals
    table = B.differences_table(d, "none")
    assert "| two | m | 8 | " in table and "+0.375 [" in table and "**" not in table.split("| two |")[1].split("|")[5]
    # every pair better by one: the interval excludes 0 and is bold
    rows2 = [_pair_row("none", f"p{i}", s, False) for i in range(3) for s in range(4)]
    rows2 += [_pair_row("m", f"p{i}", s, True) for i in range(3) for s in range(4)]
    d2 = B.paired_differences(rows2, "none")
    assert d2["m"]["all"]["exact_binding"] == {"delta": 1.0, "low": 1.0, "high": 1.0, "better": 12, "worse": 0}
    assert d2["m"]["all"]["clean_binding"] == {"delta": 1.0, "low": 1.0, "high": 1.0, "better": 12, "worse": 0}
    assert "**+1.000 [+1.000, +1.000]**" in B.differences_table(d2, "none")
    with pytest.raises(ValueError, match="reference method 'ait2i' has no results"):
        B.paired_differences(rows, "ait2i")


def test_run_writes_paired_differences(tmp_path):
    s = _run(tmp_path, FakeGenerate())
    report = json.loads((tmp_path / "summary.json").read_text())
    assert report["paired_differences"]["reference"] == "none"
    e = report["paired_differences"]["methods"]["ait2i"]["two"]
    # the fake's "none" loses the second object for seeds 1 and 3 of 0-4 on two-object prompts
    assert e["all_present"]["delta"] == pytest.approx(0.4) and e["all_present"]["better"] == 4
    assert e["all_present"]["delta"] == pytest.approx(
        s["ait2i"]["two"]["all_present"]["value"] - s["none"]["two"]["all_present"]["value"]
    )
    assert "| two | ait2i | 10 |" in (tmp_path / "summary.md").read_text()
    with pytest.raises(ValueError, match="reference 'ait2i:w_isolation=0' is not among"):
        _run(tmp_path, FakeGenerate(), reference="ait2i:w_isolation=0")


def test_grid_of_a_run(tmp_path):
    _run(tmp_path, FakeGenerate())
    png = B.save_grid(tmp_path, tmp_path / "grid.png", seeds=[0, 1, 2])
    with Image.open(png) as im:
        w, h = im.size
    assert w > h > 100  # 2 categories x 2 methods = 4 rows, 3 columns plus the row labels
    with pytest.raises(ValueError, match="not in"):
        B.save_grid(tmp_path, tmp_path / "g2.png", seeds=[0, 7])
    assert not (tmp_path / "g2.png").exists()
    with pytest.raises(ValueError, match="no results"):
        B.save_grid(tmp_path / "empty", tmp_path / "g3.png")


def test_new_rows_follows_appended_complete_lines(tmp_path):
    path = tmp_path / B.RESULTS
    path.write_text(json.dumps({"method": "none", "prompt": "a", "seed": 0}) + "\n")
    follow = B._NewRows(path)
    assert follow.keys() == []
    B._append_rows(path, [{"method": "ait2i", "prompt": "a", "seed": 1}])
    with open(path, "a") as f:
        f.write('{"method": "ait2i", "prompt"')  # a line still being written
    assert follow.keys() == [("ait2i", "a", 1)]
    with open(path, "a") as f:
        f.write(': "b", "seed": 2}\n')
    assert follow.keys() == [("ait2i", "b", 2)] and follow.keys() == []
