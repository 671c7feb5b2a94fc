"""Benchmark run folders stay truthful after kills, torn files and odd requests: every summarised row belongs to
the PNG on disk (its image id and SHA-256) and to the request; images saved but not scored are scored on resume;
a torn last line of ``rows.jsonl`` is dropped and its image scored again; equal method configs get one label and
folder; tables say what they cover and compare methods on the same images; bad ``--out``/manifests are refused
up front."""

import argparse
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ait2i.bench import report, rundir, runner
from ait2i.bench.scorers import ShapesScorer
from ait2i.bench.specs import method_dir, parse_methods
from ait2i.cli import bench as bench_cli
from ait2i.cli.bench import main as bench


def _draw(pipe, prompt, subjects, method, generator, num_images_per_prompt, **kw):
    """What was asked, drawn by the scene renderer (the checker finds it); one scene per seed."""
    from ait2i.shapes.render import render, sample_scene

    objs = [tuple(x.split()) for x in subjects]
    scenes = [sample_scene(g.initial_seed(), len(objs), [c for c, _ in objs], [s for _, s in objs]) for g in generator]
    return SimpleNamespace(images=[render(sc) for sc in scenes])


def _args(*argv):
    parser = argparse.ArgumentParser(prog="ait2i")
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def _shapes(out, *extra, methods="none"):
    """The argv of a small ``bench shapes`` run: one category, one prompt, two seeds."""
    argv = ["shapes", "--categories", "single", "--limit", "1", "--seeds", "0-1", "--methods", methods]
    return [*argv, "--device", "cpu", "--out", str(out), "--quiet", *extra]


def _generate(argv, fail_after_saves=None, **kw):
    """Run the generation of a ``bench shapes`` argv with the fake pipeline (scored as it goes)."""
    args = _args(*argv)
    run, _ = bench_cli.plan(args, bench_cli._suite_spec("shapes", args.categories))
    saves = []

    def saved(rel):
        saves.append(rel)
        if fail_after_saves is not None and len(saves) >= fail_after_saves:
            raise KeyboardInterrupt("killed between saving an image and appending its row")

    return runner.generate(
        None,
        run,
        progress=False,
        generate_fn=_draw,
        scorers={"shapes": ShapesScorer()},
        force=args.force,
        batch_size=args.batch_size,
        on_saved=saved,
        **kw,
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _png_ids(out: Path) -> dict:
    from ait2i.io import read_png_params

    return {p.relative_to(out).as_posix(): read_png_params(p)["image_id"] for p in out.rglob("*.png")}


def _rows_match_pngs(out: Path) -> None:
    """Every PNG has a row with its image id and hash; every line of rows.jsonl is JSON."""
    lines = (out / rundir.ROWS).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    have = {(r["image"], r["image_id"], r.get("sha256")) for r in rows}
    for rel, iid in _png_ids(out).items():
        assert (rel, iid, _sha(out / rel)) in have, rel


# -- item 1: rows tied to their PNG and to the request -------------------------------------------------------------
def test_summary_uses_only_rows_of_the_images_on_disk(tmp_path, capsys):
    out = tmp_path / "run"
    _generate(_shapes(out, "--steps", "2"))
    before = (out / rundir.ROWS).read_bytes()
    _generate(_shapes(out, "--steps", "3", "--force"))
    (out / rundir.ROWS).write_bytes(before)  # the rows of the 3-step run are lost (a kill before appending)
    _generate(_shapes(out, "--steps", "3"))  # resume: nothing to generate, but nothing scored for these PNGs
    capsys.readouterr()
    assert bench(_shapes(out, "--steps", "3", "--summarize-only")) == 0
    text = capsys.readouterr().out
    assert "3 steps" in text and "missing" not in text
    scores = json.loads((out / "scores.json").read_text())
    ids = _png_ids(out)
    assert len(scores["per_image"]) == 2
    assert all(r["image_id"] == ids[r["image"]] and r["sha256"] == _sha(out / r["image"]) for r in scores["per_image"])


def test_summarize_only_leaves_out_a_truncated_png(tmp_path, capsys):
    out = tmp_path / "run"
    _generate(_shapes(out, "--steps", "2"))
    victim = next(out.rglob("1.png"))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    capsys.readouterr()
    assert bench(_shapes(out, "--steps", "2", "--summarize-only")) == 0
    text = capsys.readouterr().out
    scores = json.loads((out / "scores.json").read_text())
    assert [r["seed"] for r in scores["per_image"]] == [0]
    assert len(scores["missing"]) == 1 and "1 planned images missing" in text


@pytest.mark.parametrize(
    ("request_", "message"),
    [(["--steps", "4"], "num_inference_steps"), (["--steps", "2", "--set", "scale_factor=3"], "scale_factor")],
)
def test_summarize_only_refuses_a_request_unlike_the_folder(tmp_path, capsys, request_, message):
    out = tmp_path / "run"
    _generate(_shapes(out, "--steps", "2", methods="none,ait2i"))
    capsys.readouterr()
    assert bench(_shapes(out, *request_, "--summarize-only", methods="none,ait2i")) == 2
    err = capsys.readouterr().err
    assert err.startswith("ait2i: error:") and message in err and not (out / "scores.json").exists()


# -- item 13: saved but not scored --------------------------------------------------------------------------------
def test_images_saved_but_not_scored_are_scored_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    argv = _shapes(out, "--steps", "2", "--batch-size", "1", methods="none,ait2i")
    with pytest.raises(KeyboardInterrupt):
        _generate(argv, fail_after_saves=3)  # the 3rd image is saved, its row never written
    assert len(_png_ids(out)) == 3 and len(rundir.load_rows(out)) == 2
    rep = _generate(argv)
    assert rep.skipped == 3 and len(rep.generated) == 1 and len(rep.scored) == 1
    assert rep.scored[0].startswith("ait2i/") and rep.scored[0].endswith("/0.png")  # the 3rd image saved
    _rows_match_pngs(out)
    assert len(rundir.load_rows(out)) == 4


# -- item 14: a torn last line of rows.jsonl ----------------------------------------------------------------------
def test_a_torn_last_row_is_dropped_and_its_image_scored_again(tmp_path, capsys):
    out = tmp_path / "run"
    argv = _shapes(out, "--steps", "2", "--batch-size", "1", methods="none,ait2i")
    with pytest.raises(KeyboardInterrupt):
        _generate(argv, fail_after_saves=3)
    data = (out / rundir.ROWS).read_bytes()
    (out / rundir.ROWS).write_bytes(data[: len(data) - 40])  # killed in the middle of writing the 2nd row
    capsys.readouterr()
    rep = _generate(argv)
    assert "half-written" in capsys.readouterr().err
    assert len(rep.generated) == 1 and len(rep.scored) == 2
    _rows_match_pngs(out)
    assert bench(_shapes(out, "--steps", "2", "--summarize-only", methods="none,ait2i")) == 0
    assert "missing" not in capsys.readouterr().out


def test_a_torn_last_row_is_reported_by_a_summary(tmp_path, capsys):
    out = tmp_path / "run"
    _generate(_shapes(out, "--steps", "2"))
    data = (out / rundir.ROWS).read_bytes()
    (out / rundir.ROWS).write_bytes(data[:-10])
    capsys.readouterr()
    assert bench(_shapes(out, "--steps", "2", "--summarize-only")) == 0
    cap = capsys.readouterr()
    assert "half-written" in cap.err and "1 planned images missing" in cap.out


# -- item 15: one label per config --------------------------------------------------------------------------------
def test_equal_configs_get_one_label_and_colliding_labels_are_refused(tmp_path):
    ((a, ca),) = parse_methods("ait2i:scale_range=(1,0.5)")
    ((b, cb),) = parse_methods("ait2i:scale_range=[1,0.5]")
    ((c, _),) = parse_methods("ait2i:scale_range=1+0.5")
    assert a == b == c and ca == cb and method_dir(a) == method_dir(b)
    for spec in (
        "ait2i:scale_range=[1,0.5],from_where=up+down,max_guided_steps=1.0",
        "attend-and-excite:refinement=none",
    ):
        ((label, cfg),) = parse_methods(spec)
        assert parse_methods(label) == [(label, cfg)]  # a canonical label reads back to its config
    ((d, _),) = parse_methods("ait2i:w_presence=0,w_isolation=0.0")
    ((e, _),) = parse_methods("ait2i:w_isolation=0,w_presence=0")
    assert d == e == "ait2i:w_isolation=0,w_presence=0"
    # labels the project's docs and presets use are unchanged
    for spec in (
        "ait2i:w_isolation=0",
        "ait2i:aggregation_metric=euclidean",
        "ait2i:refinement={0:0.05,0.2:0.5,0.4:0.8}",
    ):
        assert parse_methods(spec)[0][0] == spec
    assert parse_methods("ait2i:max_guided_steps=10")[0][1].max_guided_steps == 10  # int stays a step count
    assert parse_methods("ait2i:max_guided_steps=10")[0][0] != parse_methods("ait2i:max_guided_steps=1.0")[0][0]
    with pytest.raises(ValueError, match="listed twice"):
        parse_methods("ait2i:scale_range=(1,0.5),ait2i:scale_range=[1,0.5]")
    default = parse_methods("ait2i")[0][1].w_isolation
    with pytest.raises(ValueError, match="same config"):
        parse_methods(f"ait2i,ait2i:w_isolation={default}")
    with pytest.raises(ValueError, match="same config"):
        parse_methods("ait2i,ait2i:w_isolation=0", "w_isolation=0")


def test_a_label_of_another_spelling_cannot_take_over_a_folder(tmp_path):
    out = tmp_path / "run"
    args = _args(*_shapes(out, "--steps", "2", methods="ait2i:scale_range=(1,0.5)"))
    run, _ = bench_cli.plan(args, "shapes:single")
    old = run.manifest()
    old["methods"] = {"ait2i:scale_range=[1,0.5]": old["methods"][run.methods[0][0]]}  # as an older version wrote
    rundir.write_manifest(out, old)
    with pytest.raises(ValueError, match="folder"):
        rundir.check_manifest(out, run.manifest())


# -- item 10: what the tables cover -------------------------------------------------------------------------------
def test_tables_say_what_they_cover_and_compare_methods_on_the_same_images(tmp_path, capsys):
    out = tmp_path / "run"
    two = ["shapes", "--categories", "single", "--seeds", "0-1", "--device", "cpu", "--out", str(out), "--quiet"]
    _generate([*two, "--limit", "2", "--methods", "none", "--steps", "2"])
    _generate([*two, "--limit", "1", "--methods", "ait2i", "--steps", "2"])
    capsys.readouterr()
    assert bench([*two, "--limit", "1", "--methods", "none,ait2i", "--steps", "2", "--summarize-only"]) == 0
    text = capsys.readouterr().out
    assert "first 1 prompts per category" in text and "first 2 prompts" not in text
    assert bench([*two, "--limit", "2", "--methods", "none,ait2i", "--steps", "2", "--summarize-only"]) == 0
    text = capsys.readouterr().out
    scores = json.loads((out / "scores.json").read_text())
    n = {m: per["clean_binding"]["all"]["n_images"] for m, per in scores["summary"]["methods"].items()}
    assert n == {"none": 2, "ait2i": 2}  # vanilla's 4 images are not averaged against ait2i's 2
    assert "2 images" in text and "not every method has" in text


# -- item 16: bad --out and manifests refused up front -------------------------------------------------------------
@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr(runner, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))


def test_shapes_out_naming_a_file_is_refused_before_loading(tmp_path, capsys, no_model):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    assert bench(_shapes(f, "--steps", "2")) == 2
    assert capsys.readouterr().err.startswith("ait2i: error:") and f.read_text() == "keep me"


def test_compare_out_in_a_missing_folder_is_refused_up_front(tmp_path, capsys):
    out = tmp_path / "run"
    _generate(_shapes(out, "--steps", "2"))
    assert bench(_shapes(out, "--steps", "2", "--summarize-only")) == 0
    capsys.readouterr()
    assert bench(["compare", str(out), "--out", str(tmp_path / "missing" / "t.md")]) == 2
    assert "missing" in capsys.readouterr().err
    assert bench(["compare", str(out), "--out", str(tmp_path / "t.md")]) == 0
    assert capsys.readouterr().out.strip() == (tmp_path / "t.md").read_text().strip()


@pytest.mark.parametrize("key", ["protocol", "suite", "methods", "seeds"])
def test_score_refuses_a_manifest_missing_a_field(tmp_path, capsys, key):
    out = tmp_path / "run"
    _generate(_shapes(out, "--steps", "2"))
    m = json.loads((out / rundir.MANIFEST).read_text())
    del m[key]
    (out / rundir.MANIFEST).write_text(json.dumps(m))
    assert bench(["score", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ait2i: error:") and key in err


def test_report_summary_pairs_only_common_images():
    rows = [
        {"method": m, "category": "c", "index": i, "prompt": f"p{i}", "seed": s, "v": float(m == "b")}
        for m, n in (("a", 3), ("b", 1))
        for i in range(n)
        for s in (0, 1)
    ]
    summ = report.summarize(rows, ["v"])
    assert summ["methods"]["a"]["v"]["all"]["n_images"] == 2 and summ["left_out"] == {"a": 4}


def test_bench_protocol_refuses_a_non_finite_guidance_scale_and_a_scheduler_without_its_package(monkeypatch):
    import importlib.util

    from ait2i.bench.runner import resolve_protocol

    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        resolve_protocol("shapes", "cpu", guidance_scale=float("nan"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a))
    with pytest.raises(ValueError, match="needs scipy"):
        resolve_protocol("shapes", "cpu", scheduler="lms")
    with pytest.raises(ValueError, match="unknown scheduler"):
        resolve_protocol("shapes", "cpu", scheduler="nope")
