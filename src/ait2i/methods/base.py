"""The method protocol: :class:`GuidanceConfig`, the base of every method's config (a dataclass validated on
construction).

Every method shares the guidance schedule of :class:`GuidanceConfig` (which steps are guided, the step size,
iterative refinement, where attention is read) and implements ``loss(raw, subjects, eot_index)`` on one capture of
the cross-attention maps; the loss-specific fields live in the subclasses (one file per built-in method in
:mod:`ait2i.methods`), and so does the space ``ait2i tune`` searches (:meth:`GuidanceConfig.search_space`,
:mod:`ait2i.methods.space`). Windows are
given either as absolute step indices (``int``, the reference implementations' semantics: "the first 25 steps",
"refine at steps 0, 10, 20" whatever the step count) or as a fraction of the steps (``float`` in (0, 1]).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from .space import READ_LAYERS, FloatRange, declare_space, declared_space

if TYPE_CHECKING:
    import torch

METRICS = ("euclidean", "cosine")
PLACES = ("down", "mid", "up")
SOFTMAX_SPANS = ("all", "prompt")
#: Largest accepted ``scale_factor``: far above any measured one (10-40), below where an update swamps the
#: unit-variance latents of every supported model.
MAX_SCALE_FACTOR = 1000.0


@dataclass
class GuidanceConfig:
    """The latent-update schedule shared by every method (docs/method.md, section 4 and "Hosts and methods")."""

    #: Side of the attention maps that guidance reads; the host interprets it (``Host.reads``). A UNet reads its
    #: cross-attention layers at that resolution; a transformer average-pools its token grid to it. ``None`` (the
    #: default) is the host's choice, so no user has to know a model's resolutions: a UNet reads the coarsest
    #: cross-attention resolution at least 16 on a side (16x16 for SD 1.x at 512 px, as Attend-and-Excite; 24x24
    #: for SD 2.x at 768 px; 32x32 for SDXL at 1024 px; the finest it has when none is that large); a transformer
    #: reads 16x16 where its grid pools to it exactly (SD3, PixArt, Flux at 512 or 1024 px), else the grid itself.
    attn_res: int | None = None
    #: UNet parts whose cross-attention layers at ``attn_res`` are averaged (over layers and heads); read by UNet
    #: hosts only (a transformer host reads its own blocks, ``read_blocks``).
    from_where: tuple[str, ...] = ("up", "down", "mid")
    #: Steps ``i < max_guided_steps`` get a gradient update. ``int``: absolute step index (25 of 50 in the
    #: references); ``float`` in (0, 1]: that fraction of the scheduler's steps.
    max_guided_steps: int | float = 25
    #: Step size ``eta_i = scale_factor * sqrt(s_i)``, ``s`` linear from ``scale_range[0]`` to ``scale_range[1]``
    #: over the scheduler's timesteps. Typical 10-40.
    scale_factor: float = 20.0
    scale_range: tuple[float, float] = (1.0, 0.5)
    #: Iterative refinement: ``{step: threshold}``; at those steps the latents are updated repeatedly until every
    #: subject's maximum (smoothed, softmaxed) attention reaches the threshold, at most ``max_refinement_steps``
    #: times. Keys are step indices (``int``) or step fractions (``float``). ``None``/empty: no refinement.
    refinement: dict[int | float, float] | None = None
    max_refinement_steps: int = 20
    #: Attend-and-Excite view of the maps: which tokens enter the x100 softmax. ``"all"``: tokens 1..75 of the
    #: padded sequence (diffusers' pipeline and the AI-T2I authors' code); ``"prompt"``: tokens 1..EOT-1 (the
    #: original Attend-and-Excite code).
    softmax_span: str = "all"
    #: Gaussian smoothing of the softmaxed maps (kernel size, sigma) before taking maxima.
    smooth_kernel: int = 3
    smooth_sigma: float = 0.5

    name: str = field(default="guidance", repr=False)

    #: The method changes the latents (``False`` only for ``"none"``, which at most records maps).
    guides: ClassVar[bool] = True
    #: The method reads per-subject boxes (``Subject.box``); a box given to a method that does not is an error.
    uses_boxes: ClassVar[bool] = False

    #: Names of the loss weights (``w_*`` fields): each a finite number >= 0, not all 0 (the loss would be constant).
    weight_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        self._validate()
        self._check_moves()

    def _validate(self) -> None:
        """Check every field (finite, in range, integer where integer, no bool for a number); a subclass extends it.

        Raises:
            ValueError: naming the field, the value and the valid range.
        """
        if self.attn_res is not None:
            check_integer("attn_res", self.attn_res, 1, note=" or None (the host's default)")
        if isinstance(self.from_where, str) or not isinstance(self.from_where, (tuple, list)):
            hint = f"; write one part as ({self.from_where!r},)" if isinstance(self.from_where, str) else ""
            raise ValueError(
                f"from_where must be a tuple of UNet parts from {PLACES}, e.g. ('up', 'down'), got "
                f"{self.from_where!r}{hint}"
            )
        self.from_where = tuple(self.from_where)
        bad = [p for p in self.from_where if p not in PLACES]
        if bad or not self.from_where or len(set(self.from_where)) != len(self.from_where):
            raise ValueError(f"from_where must be a non-empty subset of {PLACES}, each once, got {self.from_where!r}")
        _check_window("max_guided_steps", self.max_guided_steps)
        check_number("scale_factor", self.scale_factor, 0.0, MAX_SCALE_FACTOR, note=" (typical 10-40)")
        sr = self.scale_range
        if isinstance(sr, (str, bytes)) or not isinstance(sr, (tuple, list)) or len(sr) != 2:
            raise ValueError(f"scale_range must be two numbers in [0, 1] (start, end), got {sr!r}")
        for k, s in zip(("start", "end"), sr):
            check_number(f"scale_range {k}", s, 0.0, 1.0, shown=f"scale_range={sr!r}")
        self.scale_range = tuple(float(s) for s in sr)
        if self.refinement is not None and not isinstance(self.refinement, dict):
            raise ValueError(f"refinement must be a dict {{step: threshold}} or None, got {self.refinement!r}")
        self.refinement = dict(self.refinement or {})
        for k, v in self.refinement.items():
            _check_window("refinement step", k)
            check_number(f"refinement threshold at step {k!r}", v, 0.0, 1.0)
        check_integer("max_refinement_steps", self.max_refinement_steps, 0)
        if self.softmax_span not in SOFTMAX_SPANS:
            raise ValueError(f"softmax_span must be one of {SOFTMAX_SPANS}, got {self.softmax_span!r}")
        check_integer("smooth_kernel", self.smooth_kernel, 1, note=", odd")
        if self.smooth_kernel % 2 == 0:
            raise ValueError(f"smooth_kernel must be an odd int >= 1, got {self.smooth_kernel!r}")
        check_number("smooth_sigma", self.smooth_sigma, 0.0, None, low_open=True)
        for k in self.weight_fields:
            check_number(k, getattr(self, k), 0.0, None)

    def _check_moves(self) -> None:
        """Refuse a guiding config that can never change the latents: its output would be method "none" mislabelled."""
        if not self.guides:
            return
        why = None
        if self.scale_factor == 0:
            why = "scale_factor=0 makes every step size 0"
        elif max(self.scale_range) == 0:
            why = f"scale_range={self.scale_range!r} makes every step size 0"
        elif self.max_guided_steps == 0 and (not self.refinement or self.max_refinement_steps == 0):
            why = "max_guided_steps=0 guides no step and no refinement is set"
        elif self.weight_fields and all(getattr(self, k) == 0 for k in self.weight_fields):
            why = f"every loss weight ({', '.join(f'{k}=0' for k in self.weight_fields)}) is 0"
        if why:
            raise ValueError(
                f"method {self.name!r}: {why}, so it never moves the latents and its images would be unguided "
                f"sampling labelled {self.name!r}; use method 'none' for unguided sampling (it records attention "
                "maps too)"
            )

    # -- schedule ---------------------------------------------------------------------------------------------
    def guided_steps(self, num_steps: int) -> int:
        """Number of leading steps that get an update, for a scheduler with ``num_steps`` timesteps.

        A positive fraction guides at least one step (0.2 of 2 steps is 1, not 0: never a quiet no-op).
        """
        n = _resolve(self.max_guided_steps, num_steps)
        return max(n, 1) if isinstance(self.max_guided_steps, float) and self.max_guided_steps > 0 else n

    def refinement_thresholds(self, num_steps: int) -> dict[int, float]:
        """``{absolute step index: threshold}`` for a scheduler with ``num_steps`` timesteps."""
        return {_resolve(k, num_steps): v for k, v in self.refinement.items()}

    def step_sizes(self, num_steps: int) -> list[float]:
        """``eta_i = scale_factor * sqrt(linspace(s0, s1, num_steps)[i])`` (the references' schedule)."""
        s = np.linspace(self.scale_range[0], self.scale_range[1], num_steps)
        return [float(x) for x in self.scale_factor * np.sqrt(s)]

    def replace(self, **changes):
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def search_space(cls) -> dict:
        """The fields ``ait2i tune`` searches, ``{field: FloatRange | IntRange | Choice}``: the space declared for the
        class or its nearest declared ancestor (:func:`ait2i.methods.space.declare_space`, which each built-in
        method's file calls; a method may also override this)."""
        return declared_space(cls)

    # -- the method protocol ----------------------------------------------------------------------------------
    def loss(
        self, raw: torch.Tensor, subjects, eot_index: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """The method's loss on one capture.

        Args:
            raw (`torch.Tensor` of shape `(B, H, W, L)`): mean over the read layers and heads of the
                cross-attention probabilities, float32, with gradient to the latents.
            subjects (`list[Subject]`): the guided subjects (tokens, attributes, optional box).
            eot_index (`int`): index of the prompt's end token.

        Returns:
            `(loss (B,), terms {name: (B,)}, max_att (B, G))`: the loss per sample (what the gradient step
            lowers), its terms for the diagnostics, and each subject's maximum attention (refinement criterion).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement loss(raw, subjects, eot_index)")


def _check_window(what: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{what} must be an int step index >= 0 or a float fraction in [0, 1], got {v!r}")
    if isinstance(v, int) and v < 0:
        raise ValueError(f"{what} must be an int step index >= 0 or a float fraction in [0, 1], got {v!r}")
    if isinstance(v, float) and not 0.0 <= v <= 1.0:
        raise ValueError(f"{what} as a fraction of the steps must be in [0, 1], got {v!r}")


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_number(
    what: str, v, low: float, high: float | None, *, low_open: bool = False, note: str = "", shown: str = ""
) -> None:
    """Refuse ``v`` unless it is a finite real number (not a bool) in ``[low, high]`` (``(low, ...`` if open)."""
    lo = f"({low}" if low_open else f"[{low}"
    rng = f"{lo}, {high}]" if high is not None else (f"> {low}" if low_open else f">= {low}")
    ok = _is_real(v) and math.isfinite(v) and (v > low if low_open else v >= low) and (high is None or v <= high)
    if not ok:
        rng = f"in {rng}" if high is not None else rng
        raise ValueError(f"{what} must be a finite number {rng}{note}, got {shown or repr(v)}")


def check_integer(what: str, v, low: int, *, note: str = "") -> None:
    """Refuse ``v`` unless it is an int (not a bool, not a float) >= ``low``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
        raise ValueError(f"{what} must be an int >= {low}{note}, got {v!r}")


def _resolve(v: int | float, num_steps: int) -> int:
    return v if isinstance(v, int) else int(round(v * num_steps))


#: The schedule every method inherits, searched by ``ait2i tune`` for a method that declares no space of its own.
SCHEDULE_SPACE = {
    "scale_factor": FloatRange(2.0, 80.0, log=True),
    "max_guided_steps": FloatRange(0.1, 1.0),
    "from_where": READ_LAYERS,
}
declare_space(GuidanceConfig, SCHEDULE_SPACE)
