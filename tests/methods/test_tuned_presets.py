"""The tuned presets shipped in ``ait2i/methods/tuned/``: registered by name, loadable everywhere a method name is,
and tied to the model they were tuned on."""

import dataclasses

import pytest

import ait2i
from ait2i.methods.presets import read_preset, tuned_presets
from ait2i.tuning import model_fingerprint


def test_every_shipped_preset_is_registered_and_differs_from_its_method():
    shipped = tuned_presets()
    assert "ait2i-layout-shapesworld" in shipped
    for name, path in shipped.items():
        assert name in ait2i.available_methods()
        cfg = ait2i.get_method(name)
        preset = read_preset(path)
        assert dataclasses.asdict(cfg) == dataclasses.asdict(preset.config)
        assert cfg != ait2i.get_method(preset.method)  # a preset that equals its method's defaults is no preset
        assert ait2i.get_method(name) is not cfg  # a fresh config per lookup


@pytest.mark.parametrize("name", sorted(tuned_presets()))
def test_shipped_preset_names_the_model_it_was_tuned_on_and_its_held_out_result(name):
    prov = read_preset(tuned_presets()[name]).provenance
    model = prov["model"]
    assert model["sha256"] == model_fingerprint(model["name"])["sha256"], f"{name}: tuned on another model version"
    held = prov["holdout"]
    shipped = prov.get("shipped", {})
    if shipped.get("claim") == "speed":
        # a speed preset: as good as the default on the held-out seeds (point estimate within `within`), and
        # faster than the default at the full sizes measured (benchmarks/overhead.py --full-size); the issue's
        # targets are recorded beside the times, and the docs must say which are met (docs/results/tuning.md)
        assert held["paired"]["tuned-default"]["delta"] >= -shipped["within"]
        times, targets = shipped["time_vs_vanilla"], shipped["time_targets"]
        assert set(times) == set(targets) == set(shipped["default_time_vs_vanilla"]) == {"sd15-512px", "sd15-256px"}
        assert all(times[k] < shipped["default_time_vs_vanilla"][k] for k in times)
        assert times["sd15-256px"] <= targets["sd15-256px"]
    else:
        assert held["verdict"].startswith("better than the default")
        assert held["paired"]["tuned-default"]["low"] > 0  # the interval excludes 0
    assert not set(map(int, _seeds(held["seeds"]))) & set(map(int, _seeds(prov["seeds"])))


def _seeds(spec: str) -> list[int]:
    from ait2i.parsing import parse_seeds

    return parse_seeds(spec)


def test_the_layout_preset_runs_through_the_bench_spec_parser_with_overrides():
    from ait2i.bench.specs import parse_methods

    ((label, cfg),) = parse_methods("ait2i-layout-shapesworld:scale_factor=10")
    assert label == "ait2i-layout-shapesworld:scale_factor=10" and cfg.scale_factor == 10.0
    assert cfg.w_box_aggregation == ait2i.get_method("ait2i-layout-shapesworld").w_box_aggregation
