"""Attention pictures, loss plots and PNG metadata (no model needed: synthetic maps and diagnostics)."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ait2i import io as aio
from ait2i.io import read_png_params, save_png
from ait2i.viz import attention_figure, loss_plot, save_attention


def _image(size: int = 64) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _diagnostics(steps=(0, 1, 2, 3), b: int = 2, g: int = 2, record=(0, 2)):
    """A stand-in with the engine's Diagnostics fields (contract in the engine docs)."""
    recs = []
    for i in steps:
        recs.append(
            SimpleNamespace(
                step=i,
                timestep=999 - 20 * i,
                step_size=20.0,
                loss=[1.0 / (i + 1) + s for s in range(b)],
                terms={"isolation": [0.5 / (i + 1)] * b, "aggregation": [0.2] * b},
                max_attention=[[0.1 * (i + 1) + 0.01 * k for k in range(g)] for _ in range(b)],
                refinement_iterations=[0] * b,
                skipped=[i == 3 and s == 0 for s in range(b)],
            )
        )
    maps = {s: torch.rand(b, g, 16, 16) for s in record}
    subjects = [SimpleNamespace(label=f"subject {k}", tokens=(k + 1,), attributes=()) for k in range(g)]
    return SimpleNamespace(subjects=subjects, steps=recs, maps=maps, notes=[])


# -- attention_figure ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_steps,g", [(1, 1), (3, 2), (2, 4)])
def test_attention_figure_has_one_panel_per_step_and_subject(n_steps, g):
    maps = {s: torch.rand(g, 16, 16) for s in range(0, 10 * n_steps, 10)}
    fig = attention_figure(_image(), maps, [f"s{k}" for k in range(g)])
    assert len(fig.axes) == n_steps * g
    # row-major: the first column carries the step labels, the titles the subject labels
    assert fig.axes[0].get_ylabel() == "step 0"
    assert fig.axes[g - 1].get_title().startswith(f"s{g - 1}")
    if n_steps > 1:
        assert fig.axes[g].get_ylabel() == "step 10"


def test_attention_figure_accepts_tensor_forms_and_selects_steps():
    one = attention_figure(_image(), torch.rand(3, 8, 8), ["a", "b", "c"])
    assert len(one.axes) == 3
    stacked = attention_figure(_image(), torch.rand(2, 3, 8, 8), ["a", "b", "c"], steps=[5, 7])
    assert len(stacked.axes) == 6 and stacked.axes[3].get_ylabel() == "step 7"
    picked = attention_figure(_image(), {0: torch.rand(2, 4, 4), 9: torch.rand(2, 4, 4)}, ["a", "b"], steps=[9])
    assert len(picked.axes) == 2 and picked.axes[0].get_ylabel() == "step 9"


def test_attention_figure_overlay_is_upsampled_map():
    m = torch.zeros(1, 4, 4)
    m[0, 0, 0] = 2.0  # peak in the top-left corner
    fig = attention_figure(_image(32), m, ["x"])
    overlay = fig.axes[0].get_images()[1].get_array()
    assert overlay.shape == (32, 32)
    assert float(overlay.max()) == pytest.approx(1.0)  # normalised by its maximum
    assert overlay[0, 0] > overlay[-1, -1] and overlay[-1, -1] == 0


def test_attention_figure_bad_input():
    with pytest.raises(ValueError, match="labels"):
        attention_figure(_image(), torch.rand(2, 4, 4), ["only one"])
    with pytest.raises(ValueError, match="recorded steps"):
        attention_figure(_image(), {0: torch.rand(1, 4, 4)}, ["a"], steps=[3])
    with pytest.raises(ValueError, match="no attention maps"):
        attention_figure(_image(), {}, ["a"])
    with pytest.raises(ValueError, match="maps must be"):
        attention_figure(_image(), torch.rand(4, 4), ["a"])


# -- loss_plot / save_attention -----------------------------------------------------------------------------------
def test_loss_plot_lines():
    d = _diagnostics()
    fig = loss_plot(d, sample=1)
    ax_loss, ax_att = fig.axes
    labels = [line.get_label() for line in ax_loss.get_lines()]
    assert labels[:3] == ["total", "aggregation", "isolation"]
    assert "update skipped" not in labels  # only sample 0 skipped a step
    total = ax_loss.get_lines()[0].get_ydata()
    np.testing.assert_allclose(total, [1.0 / (i + 1) + 1 for i in range(4)])
    assert [line.get_label() for line in ax_att.get_lines()] == ["subject 0", "subject 1"]
    np.testing.assert_allclose(ax_att.get_lines()[1].get_ydata(), [0.1 * (i + 1) + 0.01 for i in range(4)])
    assert "update skipped" in [line.get_label() for line in loss_plot(d, sample=0).axes[0].get_lines()]
    with pytest.raises(ValueError, match="sample 2 out of range"):
        loss_plot(d, sample=2)


def test_loss_plot_nan_is_a_gap_not_an_error():
    d = _diagnostics()
    d.steps[1].loss[0] = math.nan
    line = loss_plot(d).axes[0].get_lines()[0]
    assert math.isnan(line.get_ydata()[1])


def test_save_attention_writes_one_png(tmp_path):
    d = _diagnostics(g=3)
    path = save_attention(tmp_path / "att.png", _image(), d, sample=1)
    assert path.exists() and list(tmp_path.iterdir()) == [path]
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300


def test_save_attention_without_maps_is_an_error(tmp_path):
    d = _diagnostics(record=())
    with pytest.raises(ValueError, match="no attention maps were recorded"):
        save_attention(tmp_path / "att.png", _image(), d)
    with pytest.raises(ValueError, match="recorded steps"):
        save_attention(tmp_path / "att.png", _image(), _diagnostics(), steps=[1])
    assert list(tmp_path.iterdir()) == []


# -- PNG metadata -------------------------------------------------------------------------------------------------
def test_save_png_round_trip(tmp_path):
    params = {
        "prompt": "a red car and a blue bench — ünïcode",
        "subjects": ["red car", "blue bench"],
        "seed": 3,
        "guidance_scale": 7.5,
        "method_config": {"scale_factor": 20.0, "from_where": ("up", "down"), "refinement": {}},
        "model": tmp_path / "model",
        "steps": torch.tensor(50),
    }
    img = _image()
    out = save_png(img, tmp_path / "x.png", params)
    back = read_png_params(out)
    assert back == {
        "prompt": params["prompt"],
        "subjects": ["red car", "blue bench"],
        "seed": 3,
        "guidance_scale": 7.5,
        "method_config": {"scale_factor": 20.0, "from_where": ["up", "down"], "refinement": {}},
        "model": str(tmp_path / "model"),
        "steps": 50,
    }
    with Image.open(out) as im:
        im.load()
        assert im.text["prompt"] == params["prompt"]  # one chunk per parameter, strings verbatim
        assert im.text["seed"] == "3" and im.text["subjects"] == '["red car", "blue bench"]'
        np.testing.assert_array_equal(np.asarray(im), np.asarray(img))  # pixels untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_save_png_bad_params(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_png(_image(), tmp_path / "x.png", {"ait2i": 1})
    with pytest.raises(TypeError, match="cannot store"):
        save_png(_image(), tmp_path / "x.png", {"obj": object()})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_png(_image(), tmp_path / "missing" / "x.png", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_read_png_params_on_foreign_png(tmp_path):
    _image().save(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="no 'ait2i' metadata"):
        read_png_params(tmp_path / "plain.png")


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """A save that fails halfway leaves neither a partial destination nor a temp file; an old file survives."""
    target = tmp_path / "x.png"
    save_png(_image(), target, {"seed": 1})
    before = target.read_bytes()

    real_save = Image.Image.save

    def failing_save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)  # bytes hit the disk ...
        assert os.path.getsize(fp) > 0
        raise OSError("disk full")  # ... then the writer fails

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_png(_image(), target, {"seed": 2})
    with pytest.raises(OSError, match="disk full"):
        save_png(_image(), tmp_path / "new.png", {"seed": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
    assert target.read_bytes() == before
    assert read_png_params(target) == {"seed": 1}


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "f.txt"
    with pytest.raises(KeyboardInterrupt), aio.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with aio.atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


def test_atomic_path_gives_the_mode_of_a_plain_file(tmp_path):
    import os

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    target = tmp_path / "atomic.txt"
    with aio.atomic_path(target) as tmp:
        tmp.write_text("y")
    assert oct(target.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777)
    old = os.umask(0o077)
    try:
        with aio.atomic_path(target) as tmp:
            tmp.write_text("z")
        assert target.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_boxes_are_drawn_on_every_subject_panel():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from ait2i.boxes import Box
    from ait2i.viz import _draw_grid

    fig = Figure()
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    boxes = [Box(0.0, 0.0, 0.5, 0.5), Box(0.5, 0.5, 1.0, 1.0)]
    _draw_grid(fig, img, [(0, torch.rand(2, 8, 8))], ["a", "b"], boxes=boxes)
    for c, ax in enumerate(fig.axes):
        rects = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert len(rects) == 2  # its own box and the other subject's
        own = max(rects, key=lambda p: p.get_linewidth())
        x, y = own.get_xy()
        assert (x, y, own.get_width()) == (16 * c - 0.5, 16 * c - 0.5, 16.0)  # top-left origin, pixel units
