"""Pictures of a guided generation: subject attention maps over the image, and the loss terms per step.

Everything draws with matplotlib's Agg backend (no display needed) on figures created here, never on
``pyplot``'s global state, so that it is safe in scripts, servers and tests.

:func:`save_attention` writes **one** PNG holding both parts: the grid of attention maps on top (rows = recorded
steps, columns = subjects) and the loss plot below it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .io import atomic_path


def new_figure(**kwargs):
    from matplotlib.figure import Figure  # a bare Figure draws with Agg; no pyplot, no GUI

    return Figure(**kwargs)


def _image_array(image) -> np.ndarray:
    """A PIL image, ``(H, W, 3)`` array (uint8 or float in [0, 1]) or ``(3, H, W)`` tensor -> float ``(H, W, 3)``."""
    if isinstance(image, torch.Tensor):
        arr = image.detach().float().cpu()
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.permute(1, 2, 0)  # (H, W, C)
        arr = arr.numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image must be a PIL image or an (H, W, 3) array, got shape {tuple(arr.shape)}")
    arr = arr[..., :3].astype(np.float32)
    if arr.max(initial=0.0) > 1.0:
        arr = arr / 255.0
    return np.clip(arr, 0.0, 1.0)


def _upsample(m: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of one ``(h, w)`` map to ``size`` and normalisation to [0, 1] by its maximum."""
    m = m.detach().float().cpu()
    up = torch.nn.functional.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    up = up.clamp_min(0)  # (H, W)
    peak = float(up.max())
    return (up / peak).numpy() if peak > 0 else up.numpy()


def attention_figure(
    image,
    maps: torch.Tensor | Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
    labels: Sequence[str],
    steps: Sequence[int] | None = None,
    alpha: float = 0.55,
    cmap: str = "jet",
    panel_size: float = 2.0,
):
    """Draw each subject's attention map over the image, one row per recorded step, one column per subject.

    Args:
        image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`):
            The generated image, ``(H, W, 3)`` (or a ``(3, H, W)`` tensor).
        maps (`torch.Tensor`, mapping or sequence of tensors):
            The subject maps: one ``(G, h, w)`` tensor (one row); a ``(S, G, h, w)`` tensor or a sequence of ``S``
            ``(G, h, w)`` tensors (``S`` rows); or a mapping ``{step: (G, h, w)}`` (rows in step order).
        labels (`Sequence[str]`):
            One label per subject (``G`` of them), used as column titles.
        steps (`Sequence[int]`, *optional*):
            Step index of each row. With a mapping it selects and orders the rows (each must be a key); otherwise
            it only labels them (length ``S``). Defaults to the mapping's keys, or ``0..S-1``.
        alpha (`float`, *optional*, defaults to 0.55):
            Opacity of the map over the image, in [0, 1].
        cmap (`str`, *optional*, defaults to `"jet"`):
            Matplotlib colour map of the overlay.
        panel_size (`float`, *optional*, defaults to 2.0):
            Side of one panel in inches.

    Returns:
        `matplotlib.figure.Figure` with ``S * G`` axes, row-major (step, subject). Each map is upsampled
        bilinearly to the image size and shown normalised by its own maximum; the title gives that maximum.
    """
    rows, row_steps = _rows(maps, steps)
    labels = list(labels)
    g = rows[0].shape[0]
    if len(labels) != g:
        raise ValueError(f"got {len(labels)} labels for {g} subject maps; pass one label per subject")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _image_array(image)

    fig = new_figure(figsize=(panel_size * g, panel_size * len(rows) + 0.3), layout="constrained")
    _draw_grid(fig, img, list(zip(row_steps, rows)), labels, alpha=alpha, cmap=cmap)
    return fig


def _rows(maps, steps) -> tuple[list[torch.Tensor], list[int]]:
    """Normalise the accepted ``maps`` forms into a list of ``(G, h, w)`` tensors and their step labels."""
    if isinstance(maps, Mapping):
        keys = sorted(maps) if steps is None else list(steps)
        missing = [s for s in keys if s not in maps]
        if missing:
            raise ValueError(f"no maps recorded at steps {missing}; recorded steps: {sorted(maps)}")
        rows = [torch.as_tensor(maps[s]) for s in keys]
        row_steps = keys
    else:
        if isinstance(maps, torch.Tensor) and maps.ndim == 3:
            rows = [maps]
        elif isinstance(maps, torch.Tensor) and maps.ndim == 4:
            rows = list(maps)
        elif isinstance(maps, Sequence) and not isinstance(maps, torch.Tensor):
            rows = [torch.as_tensor(m) for m in maps]
        else:
            raise ValueError(
                "maps must be a (G, h, w) or (S, G, h, w) tensor, a sequence of (G, h, w) tensors or a "
                f"{{step: (G, h, w)}} mapping; got {type(maps).__name__} of shape {getattr(maps, 'shape', '?')}"
            )
        row_steps = list(range(len(rows))) if steps is None else list(steps)
        if len(row_steps) != len(rows):
            raise ValueError(f"got {len(row_steps)} steps for {len(rows)} rows of maps")
    if not rows:
        raise ValueError("no attention maps to draw (no step was recorded)")
    shapes = {tuple(r.shape) for r in rows}
    if len(shapes) != 1 or rows[0].ndim != 3 or rows[0].shape[0] < 1:
        raise ValueError(f"every row of maps must be one (G, h, w) tensor of the same shape, got {sorted(shapes)}")
    return rows, row_steps


def loss_plot(diagnostics, sample: int = 0, figure=None):
    """Plot each loss term per guided step, and each subject's maximum attention per step.

    Args:
        diagnostics (`ait2i.engine.Diagnostics`):
            ``out.diagnostics`` of :func:`ait2i.generate`; reads ``.steps`` (``.step``, ``.loss``, ``.terms``,
            ``.max_attention``, ``.skipped``) and ``.subjects[g].label``.
        sample (`int`, *optional*, defaults to 0):
            Which image of the batch to plot.
        figure (`matplotlib.figure.Figure` or `SubFigure`, *optional*):
            Draw into this (sub)figure instead of a new one.

    Returns:
        `matplotlib.figure.Figure` (or the given ``figure``) with two axes: the loss terms (and the total) per
        step, and the maximum attention per subject per step. Steps whose update was skipped (NaN/inf) are
        marked with a red cross on the total.
    """
    records = list(diagnostics.steps)
    labels = [s.label for s in diagnostics.subjects]
    fig = figure if figure is not None else new_figure(figsize=(10, 3.4), layout="constrained")
    ax_loss, ax_att = fig.subplots(1, 2, squeeze=True)
    ax_loss.set_title("loss terms per step", fontsize=10)
    ax_att.set_title("max attention per subject", fontsize=10)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_att):
        ax.set_xlabel("denoising step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    if not records:
        for ax in (ax_loss, ax_att):
            ax.text(0.5, 0.5, "no guided step recorded", ha="center", va="center", transform=ax.transAxes)
        return fig
    n = len(records[0].loss)
    if not 0 <= sample < n:
        raise ValueError(f"sample {sample} out of range; the diagnostics hold {n} sample(s)")
    x = [r.step for r in records]

    total = [_finite(r.loss[sample]) for r in records]
    ax_loss.plot(x, total, "k-", lw=1.8, label="total")
    keys = sorted({k for r in records for k in (r.terms or {})})
    for k in keys:
        ax_loss.plot(x, [_finite(r.terms[k][sample]) if k in r.terms else math.nan for r in records], lw=1.2, label=k)
    skipped = [(r.step, 0.0) for r in records if r.skipped and r.skipped[sample]]
    if skipped:
        ax_loss.plot(*zip(*skipped), "rx", ms=8, label="update skipped")
    ax_loss.legend(fontsize=7)

    for g, label in enumerate(labels):
        ax_att.plot(x, [_finite(r.max_attention[sample][g]) for r in records], marker=".", label=label)
    ax_att.legend(fontsize=7)
    return fig


def _finite(v) -> float:
    v = float(v)
    return v if math.isfinite(v) else math.nan


def save_attention(
    path: str | os.PathLike,
    image,
    diagnostics,
    sample: int = 0,
    steps: Sequence[int] | None = None,
    dpi: int = 110,
) -> Path:
    """Write one PNG with the attention maps of every subject at the recorded steps and the loss plot below.

    Args:
        path (`str` or `os.PathLike`):
            Destination PNG, written atomically (nothing half-written on failure).
        image (`PIL.Image.Image` or array):
            The generated image of ``sample``.
        diagnostics (`ait2i.engine.Diagnostics`):
            ``out.diagnostics``; ``.maps[step]`` is ``(B, G, h, w)``.
        sample (`int`, *optional*, defaults to 0):
            Which image of the batch the picture is for.
        steps (`Sequence[int]`, *optional*):
            Recorded steps to show (rows); defaults to every recorded step.
        dpi (`int`, *optional*, defaults to 110):
            Resolution of the PNG.

    Returns:
        `Path`: the path written.
    """
    maps = diagnostics.maps
    if not maps:
        raise ValueError(
            "no attention maps were recorded; pass record_maps=(steps...) to ait2i.generate "
            "(the CLI's --attention-steps) and a guided method (method 'none' records no maps)"
        )
    keys = sorted(maps) if steps is None else list(steps)
    missing = [s for s in keys if s not in maps]
    if missing:
        raise ValueError(f"no maps recorded at steps {missing}; recorded steps: {sorted(maps)}")
    batch = next(iter(maps.values())).shape[0]
    if not 0 <= sample < batch:
        raise ValueError(f"sample {sample} out of range; the maps hold {batch} sample(s)")
    rows = {s: maps[s][sample] for s in keys}  # {step: (G, h, w)}
    labels = [s.label for s in diagnostics.subjects]
    boxes = [getattr(s, "box", None) for s in diagnostics.subjects]
    g = len(labels)

    fig = new_figure(figsize=(max(2.2 * g, 10.0), 2.2 * len(keys) + 3.8), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.2 * len(keys), 3.4])
    _draw_grid(top, _image_array(image), list(rows.items()), labels, boxes=boxes)
    loss_plot(diagnostics, sample=sample, figure=bottom)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _draw_grid(
    fig,
    img: np.ndarray,
    rows: list[tuple[int, torch.Tensor]],
    labels: list[str],
    alpha: float = 0.55,
    cmap: str = "jet",
    boxes: Sequence | None = None,
) -> None:
    """Draw the attention grid (rows = ``(step, (G, h, w) maps)``, columns = subjects) into a (sub)figure.

    ``boxes`` (one ``ait2i.Box`` or ``None`` per subject): each column draws its subject's box solid and the
    other subjects' boxes dotted, over the image and the map.
    """
    size = img.shape[:2]
    boxes = list(boxes) if boxes is not None else [None] * len(labels)
    axes = fig.subplots(len(rows), len(labels), squeeze=False)
    for r, (step, row) in enumerate(rows):
        for c, label in enumerate(labels):
            ax = axes[r][c]
            ax.imshow(img)
            ax.imshow(_upsample(row[c], size), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
            for k, box in enumerate(boxes):
                if box is not None:
                    _draw_box(ax, box, size, own=k == c)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label} (max {float(row[c].max()):.3g})", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"step {step}", fontsize=9)


def _draw_box(ax, box, size: tuple[int, int], own: bool) -> None:
    """A normalised ``(x0, y0, x1, y1)`` box (top-left origin) on an image axis of ``size = (H, W)`` pixels."""
    from matplotlib.patches import Rectangle

    h, w = size
    x0, y0, x1, y1 = box.as_tuple()
    ax.add_patch(
        Rectangle(
            (x0 * w - 0.5, y0 * h - 0.5), (x1 - x0) * w, (y1 - y0) * h, fill=False, edgecolor="white",
            linewidth=1.6 if own else 0.8, linestyle="-" if own else ":",
        )
    )  # fmt: skip
