"""The ShapesWorld benchmark: its fixed prompts, the method-spec syntax, the framed grid of a run."""

import importlib
import json

import pytest
from PIL import Image

from ait2i.bench import specs as B
from ait2i.bench.grid import save_grid
from ait2i.bench.suites.shapes import CATEGORIES, shapes_items
from ait2i.methods import AIT2IConfig, AttendExciteConfig, NoGuidanceConfig

R = importlib.import_module("ait2i.shapes.render")  # the package re-exports a function named render


def test_prompt_categories():
    prompts = shapes_items(per_category=12)
    assert prompts == shapes_items(per_category=12)  # fixed
    assert [p.prompt for p in shapes_items(["two"], 4)] == [p.prompt for p in prompts if p.category == "two"][:4]
    by = {c: [p for p in prompts if p.category == c] for c in CATEGORIES}
    for cat, ps in by.items():
        assert len(ps) == 12 and len({p.prompt for p in ps}) == 12, cat
        for p in ps:
            objects = p.data["objects"]
            colors, shapes = [c for c, _ in objects], [s for _, s in objects]
            assert len(set(colors)) == len(colors)
            assert p.prompt == R.caption_of(list(p.subjects))
            held = [o for o in objects if o in R.HELD_OUT]
            assert len(held) == (1 if cat in ("held_out", "three_held_out") else 0)
            assert len(objects) == (1 if cat == "single" else 3 if cat.startswith("three") else 2)
            if cat in ("two", "held_out"):
                assert len(set(shapes)) == 2
            if cat in ("same_shape", "three_same_shape"):
                assert len(set(shapes)) == 1
        if cat == "three_held_out":  # the held-out object's position rotates
            assert {[o in R.HELD_OUT for o in p.data["objects"]].index(True) for p in ps} == {0, 1, 2}
    with pytest.raises(ValueError, match="unknown categories"):
        shapes_items(["four"])
    with pytest.raises(ValueError, match="1..12"):
        shapes_items(per_category=13)


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
    configs = [json.dumps(B.config_dict(c), sort_keys=True) for _, c in ablation]
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
        ("ait2i:w_isolaton=0", r"no field 'w_isolaton'; its fields are .*w_isolation"),
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
        ("none:w_isolation=0", "none has no field 'w_isolation'"),
        ("", "no method given"),
    ],
)
def test_method_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        B.parse_methods(spec)


def test_default_methods_scale_attend_and_excite_windows():
    (_, none), (ae_label, ae), (_, ours) = B.parse_methods("default")
    preset = AttendExciteConfig()
    assert none.name == "none" and ours == AIT2IConfig() and ae_label.startswith("attend-and-excite:")
    # at the references' 50 steps the scaled windows are exactly the preset's
    assert ae.refinement_thresholds(50) == preset.refinement_thresholds(50) == {0: 0.05, 10: 0.5, 20: 0.8}
    assert ae.guided_steps(50) == preset.guided_steps(50) == 25
    assert ae.refinement_thresholds(20) == {0: 0.05, 4: 0.5, 8: 0.8} and ae.guided_steps(20) == 10


def test_grid_of_a_run(tmp_path):
    from types import SimpleNamespace

    from ait2i.bench import rundir, runner
    from ait2i.bench.scorers import ShapesScorer
    from ait2i.bench.suites import load_suite

    def fake(pipe, prompt, subjects, method, generator, num_images_per_prompt, **kw):
        objs = [tuple(x.split()) for x in subjects]
        scenes = [
            R.sample_scene(g.initial_seed(), len(objs), [c for c, _ in objs], [s for _, s in objs]) for g in generator
        ]
        return SimpleNamespace(images=[R.render(sc) for sc in scenes])

    run = runner.Run(
        load_suite("shapes:single+two").head(1),
        B.parse_methods("none,ait2i"),
        (0, 1, 2),
        runner.resolve_protocol("shapes"),
        "fake",
        tmp_path,
    )
    runner.generate(None, run, progress=False, generate_fn=fake, scorers={"shapes": ShapesScorer()})
    rows = rundir.load_rows(tmp_path)
    assert len(rows) == 12 and all(r["clean_binding"] == 1.0 for r in rows)  # the fake draws what was asked
    png = save_grid(tmp_path, tmp_path / "grid.png", seeds=[0, 1, 2])
    with Image.open(png) as im:
        w, h = im.size
    assert w > h > 100
    with pytest.raises(ValueError, match="not in"):
        save_grid(tmp_path, tmp_path / "g2.png", seeds=[0, 7])
    assert not (tmp_path / "g2.png").exists()
