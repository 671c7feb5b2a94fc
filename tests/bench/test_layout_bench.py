"""The ShapesWorld layout benchmark as a suite of the one runner: its items, its scorer on renders of known
scenes, per-method subjects (boxes only for box methods) and an end-to-end pass that writes rows and scores."""

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ait2i.bench import rundir, runner
from ait2i.bench.scorers import LayoutScorer, load_scorers
from ait2i.bench.scorers.layout import score_layout
from ait2i.bench.specs import parse_methods
from ait2i.bench.suites import load_suite
from ait2i.bench.suites.layout import CATEGORIES, layout_items, objects_of
from ait2i.boxes import split_box_spec

R = importlib.import_module("ait2i.shapes.render")  # the package re-exports a function named render


def _scene(objects, swap: bool = False):
    """The scene an item's boxes describe (each object drawn filling its box); ``swap`` rotates the objects'
    places (each object drawn in the next one's box)."""
    places = [((b.x0 + b.x1) / 2 * 32, (b.y0 + b.y1) / 2 * 32, (b.x1 - b.x0) * 32) for _, _, b in objects]
    if swap:
        places = places[1:] + places[:1]
    specs = [R.ShapeSpec(c, s, *p) for (c, s, _), p in zip(objects, places)]
    return R.render(R.Scene(specs, 40))


def test_suite_items():
    suite = load_suite("layout")
    assert (suite.protocol, suite.seeds, suite.scorers, suite.categories) == ("shapes", "0-7", ("layout",), CATEGORIES)
    assert len(suite.items) == 36 and load_suite("layout").items == suite.items  # fixed
    assert len({suite.image_path(it, 0, (0,)) for it in suite.items}) == 36  # a folder per layout
    for cat in CATEGORIES:
        items = [it for it in suite.items if it.category == cat]
        assert [it.index for it in items] == list(range(12))
        assert len({it.prompt for it in items}) == 4  # 4 prompts x 3 layouts
        for it in items:
            objs = objects_of(it)
            assert len(objs) == (3 if cat == "three" else 2)
            assert it.prompt == R.caption_of([f"{c} {s}" for c, s, _ in objs])
            assert len({c for c, _, _ in objs}) == len(objs)  # colours distinct within a prompt
            for subject, (c, s, box) in zip(it.subjects, objs):
                phrase, parsed = split_box_spec(subject)
                assert phrase == f"{c} {s}" and np.allclose(parsed.as_tuple(), box.as_tuple(), atol=1e-5)
                assert 0.0 <= box.x0 < box.x1 <= 1.0 and 0.0 <= box.y0 < box.y1 <= 1.0
            if cat == "corners":  # small, in opposite corners
                centres = [((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2) for _, _, b in objs]
                assert all(min(x, 1 - x) < 0.25 and min(y, 1 - y) < 0.25 for x, y in centres)
                assert all(b.width < 0.35 for _, _, b in objs)
    # the LayoutItem list, unchanged
    old = [(x.prompt, x.objects) for x in layout_items()]
    assert old == [(it.prompt, tuple(objects_of(it))) for it in suite.items]
    corners = load_suite("layout:corners").head(3)
    assert [it.data["layout_id"] for it in corners.items] == ["corners-0-0", "corners-0-1", "corners-0-2"]
    assert corners.seeds == "0-7"
    with pytest.raises(ValueError, match="unknown layout categories"):
        load_suite("layout:four")


def test_every_layout_is_drawable_and_scores_itself():
    """A render of each item's own scene: the checker finds exactly the requested objects, each in its box (IoU
    near 1 up to pixel rounding); the same objects in each other's places score IoU 0 and never all in box."""
    for it in load_suite("layout").items:
        own = score_layout(_scene(objects_of(it)), it)
        assert own["iou"] > 0.8 and own["all_in_box"] == own["centre_in_box"] == 1.0, it.data["layout_id"]
        assert own["exact_binding"] == own["clean_binding"] == 1.0
        swapped = score_layout(_scene(objects_of(it), swap=True), it)
        assert swapped["iou"] < 0.2 and swapped["all_in_box"] == 0.0, it.data["layout_id"]
        assert swapped["exact_binding"] == 1.0  # binding is right; only the places are wrong
    blank = score_layout(R.render(R.Scene([], 40)), it)
    assert blank == {"iou": 0.0, "centre_in_box": 0.0, "all_in_box": 0.0, "exact_binding": 0.0, "clean_binding": 0.0}
    old = layout_items()[0]  # a LayoutItem scores the same way
    assert score_layout(_scene(old.objects), old)["all_in_box"] == 1.0


class FakeGenerate:
    """Draws each item's own scene for box methods and the swapped scene for the others; records subjects."""

    def __init__(self):
        self.calls = []

    def __call__(self, pipe, prompt, subjects, method, generator, num_images_per_prompt, **kw):
        self.calls.append((method.name, list(subjects)))
        objs = [(*split_box_spec(s)[0].split(), split_box_spec(s)[1]) for s in subjects]
        if objs[0][2] is None:  # no boxes given: draw the true layout swapped (the item is found by its prompt)
            item = next(it for it in load_suite("layout").items if it.prompt == prompt)
            return SimpleNamespace(images=[_scene(objects_of(item), swap=True)] * num_images_per_prompt)
        return SimpleNamespace(images=[_scene(objs)] * num_images_per_prompt)


def test_runner_gives_boxes_only_to_box_methods_and_summarises(tmp_path):
    from ait2i.bench.report import write_scores
    from ait2i.io import read_png_params

    suite = load_suite("layout:two+corners").head(2)
    run = runner.Run(
        suite, parse_methods("none,layout-guidance"), (0, 1), runner.resolve_protocol("shapes", "cpu"), "m", tmp_path
    )
    fake = FakeGenerate()
    runner.generate(None, run, progress=False, generate_fn=fake, scorers={"layout": LayoutScorer()})
    assert all("@" not in s for m, subj in fake.calls if m == "none" for s in subj)
    assert all("@" in s for m, subj in fake.calls if m == "layout-guidance" for s in subj)
    png = next((tmp_path / "none").rglob("0.png"))
    assert all("@" not in s for s in read_png_params(png)["subjects"])
    rows = rundir.load_rows(tmp_path)
    assert len(rows) == 2 * 4 * 2 and all(set(LayoutScorer.keys) <= set(r) for r in rows)
    assert {r["all_in_box"] for r in rows if r["method"] == "layout-guidance"} == {1.0}
    assert {r["all_in_box"] for r in rows if r["method"] == "none"} == {0.0}
    scores = write_scores(tmp_path, rows, rundir.read_manifest(tmp_path), {"layout": LayoutScorer()})
    diff = scores["summary"]["paired"]["layout-guidance"]["all_in_box"]
    assert diff["all"]["delta"] == 1.0 and diff["all"]["n_pairs"] == 8 and diff["all"]["n_prompts"] == 4
    assert diff["two"]["n_prompts"] == 2  # two layouts of one prompt are two clusters
    assert "iou" in (tmp_path / "scores.md").read_text()
    # scoring the folder afterwards reads the same numbers
    again = runner.score(tmp_path, load_scorers(["layout", "shapes"]), progress=False)
    assert len(again) == 16 and {r["all_in_box"] for r in again if r["method"] == "none"} == {0.0}


@pytest.mark.slow
def test_layout_command_on_a_tiny_pipeline(tmp_path, monkeypatch, capsys):
    """``ait2i bench layout`` end to end on a tiny random pipeline: rows with the layout metrics, scores.json;
    a rerun resumes."""
    import torch

    from ait2i.cli.bench import main as bench
    from ait2i.testing import tiny_sd_pipeline

    torch.set_num_threads(1)
    monkeypatch.setattr(runner, "load_pipeline", lambda model, protocol, device=None: tiny_sd_pipeline())
    monkeypatch.setattr("ait2i.cli.bench.model_identity", lambda model: "tiny")
    out = tmp_path / "layout"
    argv = ["--categories", "corners", "--limit", "1", "--seeds", "0-1", "--steps", "2", "--out", str(out), "--quiet"]
    assert bench(["layout", "--methods", "none,layout-guidance", *argv]) == 0
    text = capsys.readouterr().out
    assert "4 assigned, 0 already done, 4 generated" in text and "| iou | corners | none |" in text
    rows = rundir.load_rows(out)
    assert len(rows) == 4 and all(0.0 <= r["iou"] <= 1.0 and "all_in_box" in r for r in rows)
    scores = json.loads((out / "scores.json").read_text())
    assert scores["manifest"]["suite"] == "layout:corners" and scores["summary"]["reference"] == "none"
    assert bench(["layout", "--methods", "none,layout-guidance", *argv]) == 0  # the same run, resumed
    assert "4 already done, 0 generated" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))[0].startswith("layout-guidance/corners/")
    assert isinstance(Image.open(next(Path(out).rglob("*.png"))), Image.Image)
