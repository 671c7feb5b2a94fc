"""The latent-update engine shared by every method and every host (docs/method.md, section 4 and "Hosts and methods").

Given ``attend(z, t, rows) -> raw maps (B, h, w, L)`` (a conditional forward pass of the denoiser that fills an
attention store, with gradient), a method config and the scheduler's timesteps, :meth:`GuidanceEngine.step`
returns the latents updated for step ``i``:

    z <- z - eta_i * grad_z L(z)     for guided steps (i < max_guided_steps),

with optional iterative refinement at chosen steps (repeat the update until every subject's maximum attention
reaches the threshold). A sample whose loss or gradient is not finite keeps its latents (the update is
skipped), and so does one whose updated latents would not be finite (the update is undone): each such update is
recorded in its step's ``skipped``, and :meth:`GuidanceEngine.finish` sums them up in one diagnostics note and one
warning per run. The engine knows no pipeline and no method: host adapters (``ait2i.hosts``) call it before each
step of their loop with the denoiser's input ``z`` (the scale-free model input), and it asks the method
(``ait2i.methods``) for the loss.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from .losses import group_maps
from .methods.base import GuidanceConfig
from .subjects import Subject

AttendFn = Callable[[torch.Tensor, object, torch.Tensor | None], torch.Tensor]


@dataclass
class StepRecord:
    """What happened at one denoising step (values per sample of the batch)."""

    step: int
    timestep: int
    step_size: float
    guided: bool
    loss: list[float]
    terms: dict[str, list[float]]
    max_attention: list[list[float]]  # sample x subject
    refinement_iterations: list[int]
    skipped: list[bool]


@dataclass
class Diagnostics:
    """Per-step losses and attention statistics of one guided generation."""

    method: str
    config: GuidanceConfig
    subjects: list[Subject]
    steps: list[StepRecord] = field(default_factory=list)
    maps: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> (B, G, h, w) raw subject maps
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-serialisable view (maps left out; they are tensors)."""
        return {
            "method": self.method,
            "config": {k: _jsonable(v) for k, v in asdict(self.config).items()},
            "subjects": [s.to_dict() for s in self.subjects],
            "steps": [asdict(r) for r in self.steps],
            "notes": list(self.notes),
            "recorded_map_steps": sorted(self.maps),
        }


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return list(v)
    return v


class GuidanceEngine:
    """Applies a method's latent updates step by step and records diagnostics.

    Args:
        config (`GuidanceConfig`): the method, any registered one (``ait2i.methods``).
        subjects (`list[Subject]`): the guided subjects.
        attend (`callable`): ``attend(z, t, rows)`` runs the conditional denoiser on ``z`` (rows ``rows`` of the
            batch, or all when ``None``) with attention recording and returns the raw maps ``(b, h, w, L)``.
        eot_index (`int`): index of the prompt's end token.
        num_steps (`int`): number of scheduler timesteps (the length of the step-size schedule).
        record_maps (`Sequence[int]`): steps whose subject maps are kept in the diagnostics.
    """

    def __init__(
        self,
        config: GuidanceConfig,
        subjects: Sequence[Subject],
        attend: AttendFn,
        eot_index: int,
        num_steps: int,
        record_maps: Sequence[int] = (),
    ):
        self.cfg = config
        self.subjects = list(subjects)
        self.attend = attend
        self.eot = eot_index
        self.num_steps = num_steps
        self.guided = config.guided_steps(num_steps) if config.guides else 0
        self.thresholds = config.refinement_thresholds(num_steps) if config.guides else {}
        self.step_sizes = config.step_sizes(num_steps)
        self.record = set(record_maps)
        self.diagnostics = Diagnostics(config.name, config, self.subjects)
        if len(self.subjects) == 1 and getattr(config, "w_isolation", 0) > 0:
            self.diagnostics.notes.append("one subject: isolation has no pair and is zero")
        if config.guides:
            self.diagnostics.notes.extend(window_notes(config, num_steps))
        #: ``{reason: {sample: [step, ...]}}`` of skipped updates (main updates and refinement iterations).
        self._skips: dict[str, dict[int, list[int]]] = {}
        self._finished = False

    def needs_step(self, i: int) -> bool:
        """Whether step ``i`` runs a guided (or recording) forward pass."""
        return i < self.guided or i in self.thresholds or i in self.record

    def _loss(self, z: torch.Tensor, t, rows: torch.Tensor | None):
        raw = self.attend(z, t, rows)  # (b, h, w, L) float32
        loss, terms, max_att = self.cfg.loss(raw, self.subjects, self.eot)
        return raw, loss, terms, max_att

    def _update(self, z: torch.Tensor, loss: torch.Tensor, eta: float, step: int, what: str = "update", rows=None):
        """One gradient step per sample; returns ``(new latents, skipped (B,) bool)``.

        A sample keeps its latents when its loss or gradient is not finite (skipped) or when its updated latents, in
        the latents' dtype, would not be finite (undone: e.g. a float16 overflow); a zero loss leaves it as it is
        too (nothing to lower). Skips are recorded for :meth:`finish` under ``what``, as samples ``rows`` of the
        batch (all when ``None``).
        """
        finite = torch.isfinite(loss)
        grad = torch.autograd.grad(torch.where(finite, loss, 0.0).sum(), [z], allow_unused=True)[0]
        if grad is None:  # loss independent of z (e.g. no subject has the attribute a weighted term reads)
            grad = torch.zeros_like(z)
        dims = tuple(range(1, z.ndim))
        ok = finite & torch.isfinite(grad).all(dim=dims) if z.ndim > 1 else finite
        move = ok & (loss != 0)
        shape = (-1, *[1] * (z.ndim - 1))
        new = (z.detach().float() - eta * torch.where(move.view(shape), grad.float(), 0.0)).to(z.dtype)
        blown = move & ~torch.isfinite(new).all(dim=dims) if z.ndim > 1 else move & ~torch.isfinite(new)
        new = torch.where(blown.view(shape), z.detach(), new)
        self._record_skips(f"{what} skipped (non-finite loss or gradient)", ~ok, step, rows)
        self._record_skips(
            f"{what} undone (non-finite latents after the update; lower scale_factor)", blown, step, rows
        )
        return new, ~ok | blown

    def _record_skips(self, reason: str, mask: torch.Tensor, step: int, rows=None) -> None:
        for b in mask.nonzero().flatten().tolist():
            sample = b if rows is None else int(rows[b])
            self._skips.setdefault(reason, {}).setdefault(sample, []).append(step)

    def finish(self, stacklevel: int = 2) -> None:
        """End of the run: one diagnostics note per kind of skipped update, and one warning with their counts.

        Call it once when the pipeline's loop is done (``generate`` does); a second call does nothing.
        """
        if self._finished:
            return
        self._finished = True
        guided = sum(1 for r in self.diagnostics.steps if r.guided)
        notes = []
        for reason, per_sample in self._skips.items():
            refining = reason.startswith("refinement")
            parts = []
            for b, steps in sorted(per_sample.items()):
                where = f"at steps {_ranges(sorted(set(steps)))}"
                count = f"{len(steps)} iterations" if refining else f"{len(steps)} of {guided} guided steps"
                parts.append(f"sample {b}: {count} {where}")
            notes.append(f"guidance {reason}: {'; '.join(parts)}; those samples kept their latents there")
        self.diagnostics.notes.extend(notes)
        if notes:
            warnings.warn("ait2i: " + " | ".join(notes), RuntimeWarning, stacklevel=stacklevel + 1)

    def step(self, i: int, t, latents: torch.Tensor) -> torch.Tensor:
        """Return the latents to denoise at step ``i`` (timestep ``t``), updated if the step is guided."""
        if not self.needs_step(i):
            return latents
        b = latents.shape[0]
        eta = self.step_sizes[i]
        iters = [0] * b
        guided = i < self.guided or i in self.thresholds
        with torch.set_grad_enabled(guided):
            z = latents.detach().clone().requires_grad_(guided)
            raw, loss, terms, max_att = self._loss(z, t, None)
            if i in self.thresholds:
                refined, iters = self._refine(z, t, loss, max_att, self.thresholds[i], eta, i)
                if any(iters):  # maps, loss and graph of the refined latents (else z keeps its graph)
                    z = refined.detach().requires_grad_(True)
                    raw, loss, terms, max_att = self._loss(z, t, None)
            skipped = [False] * b
            if i < self.guided:
                new, bad = self._update(z, loss, eta, i)
                skipped = bad.tolist()
            else:
                new = z.detach()
        if i in self.record:
            self.diagnostics.maps[i] = group_maps(raw.detach(), [list(s.tokens) for s in self.subjects]).cpu()
        self.diagnostics.steps.append(
            StepRecord(
                step=i,
                timestep=int(t),
                step_size=eta,
                guided=i < self.guided,
                loss=_floats(loss),
                terms={k: _floats(v) for k, v in terms.items()},
                max_attention=[_floats(row) for row in max_att],
                refinement_iterations=iters,
                skipped=skipped,
            )
        )
        return new.to(latents.dtype)

    def _refine(self, z, t, loss, max_att, threshold: float, eta: float, step: int):
        """Iterative refinement (Attend-and-Excite): per sample, update until ``1 - min_g max A_g <= 1 - threshold``.

        Each iteration re-runs the guided forward pass on the samples still below the threshold, at most
        ``max_refinement_steps`` times; the criterion uses the loss computed before that iteration's update, as in
        the reference implementation.
        """
        target = max(0.0, 1.0 - threshold)
        crit = _neglect(max_att)
        z = z.detach().clone()
        iters = torch.zeros(z.shape[0], dtype=torch.long)
        stuck = torch.zeros_like(crit, dtype=torch.bool)
        active = (crit > target) & (iters < self.cfg.max_refinement_steps)
        while bool(active.any()):
            rows = active.nonzero().flatten()
            iters[rows] += 1
            zr = z[rows].clone().requires_grad_(True)
            _, lr, _, mr = self._loss(zr, t, rows)
            new, bad = self._update(zr, lr, eta, step, "refinement update", rows)
            z[rows] = new
            stuck[rows[bad.to(rows.device)]] = True  # its update failed: trying again would fail the same way
            crit[rows] = _neglect(mr.detach())
            active = (crit > target) & (iters < self.cfg.max_refinement_steps) & ~stuck
        return z, iters.tolist()


def window_notes(cfg: GuidanceConfig, num_steps: int) -> list[str]:
    """Notes for absolute windows (``int`` step indices) that do not fit a run of ``num_steps`` steps.

    Attend-and-Excite's (and the "ait2i-paper" preset's) windows are the references' absolute step indices, kept so
    that they equal the reference at every step count; at a short run a refinement step may lie beyond the last step
    (it never happens) and ``max_guided_steps`` may cover every step. Fractions scale with the step count instead.
    """
    notes = []
    beyond = sorted(k for k in cfg.refinement if _resolve_key(k, num_steps) >= num_steps)
    if beyond:
        notes.append(
            f"refinement at steps {beyond} lies beyond this run's {num_steps} steps (0-{num_steps - 1}) and does not "
            "happen: int windows are absolute step indices (the reference's, for 50 steps); give them as fractions "
            "of the steps to scale with the step count (e.g. 0.2 for step 10 of 50)"
        )
    m = cfg.max_guided_steps
    if isinstance(m, int) and m > num_steps:
        notes.append(
            f"max_guided_steps={m} (an absolute step count) covers every step of this {num_steps}-step run; give a "
            f"fraction (e.g. max_guided_steps={m / 50:g} for {m} of 50) to scale it with the step count"
        )
    return notes


def _resolve_key(k, num_steps: int) -> int:
    return k if isinstance(k, int) else int(round(k * num_steps))


def _ranges(steps: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out, start = [], None
    for k, s in enumerate(steps):
        if start is None:
            start = s
        if k + 1 == len(steps) or steps[k + 1] != s + 1:
            out.append(f"{start}" if start == s else f"{start}-{s}")
            start = None
    return ", ".join(out)


def _neglect(max_att: torch.Tensor) -> torch.Tensor:
    """``max_g max(0, 1 - max A_g)`` per sample: Attend-and-Excite's loss, the refinement criterion."""
    return (1.0 - max_att.detach()).clamp_min(0).amax(dim=1)


def _floats(x) -> list[float]:
    return [float(v) if math.isfinite(float(v)) else float("nan") for v in torch.as_tensor(x).detach().flatten()]
