"""The latent-update engine shared by every method and every host (docs/method.md, section 4 and "Hosts and methods").

Given ``attend(z, t, rows) -> raw maps (B, h, w, L)`` (a conditional forward pass of the denoiser that fills an
attention store, with gradient), a method config and the scheduler's timesteps, :meth:`GuidanceEngine.step`
returns the latents updated for step ``i``:

    z <- z - eta_i * grad_z L(z)     for guided steps (i < max_guided_steps),

with optional iterative refinement at chosen steps (repeat the update until every subject's maximum attention
reaches the threshold), skipping (and recording) any sample whose loss or gradient is not finite. The engine knows
no pipeline and no method: host adapters (``ait2i.hosts``) call it before each step of their loop with the
denoiser's input ``z`` (the scale-free model input), and it asks the method (``ait2i.methods``) for the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from .config import GuidanceConfig
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


def subject_maps(raw: torch.Tensor, subjects: Sequence[Subject]) -> torch.Tensor:
    """``(B, h, w, L)`` raw maps -> ``(B, G, h, w)``: per subject, the mean over its noun pieces."""
    return torch.stack([raw[..., list(s.tokens)].mean(-1) for s in subjects], dim=1)


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

    def needs_step(self, i: int) -> bool:
        """Whether step ``i`` runs a guided (or recording) forward pass."""
        return i < self.guided or i in self.thresholds or i in self.record

    def _loss(self, z: torch.Tensor, t, rows: torch.Tensor | None):
        raw = self.attend(z, t, rows)  # (b, h, w, L) float32
        loss, terms, max_att = self.cfg.loss(raw, self.subjects, self.eot)
        return raw, loss, terms, max_att

    def _update(self, z: torch.Tensor, loss: torch.Tensor, eta: float):
        """One gradient step per sample; non-finite losses/gradients and zero losses leave the sample as it is."""
        finite = torch.isfinite(loss)
        grad = torch.autograd.grad(torch.where(finite, loss, 0.0).sum(), [z], allow_unused=True)[0]
        if grad is None:  # loss independent of z (e.g. all terms weighted 0)
            grad = torch.zeros_like(z)
        dims = tuple(range(1, z.ndim))
        ok = finite & torch.isfinite(grad).all(dim=dims) if z.ndim > 1 else finite
        move = ok & (loss != 0)
        new = z.detach().float() - eta * torch.where(move.view(-1, *[1] * (z.ndim - 1)), grad.float(), 0.0)
        return new.to(z.dtype), ~ok

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
                refined, iters = self._refine(z, t, loss, max_att, self.thresholds[i], eta)
                if any(iters):  # maps, loss and graph of the refined latents (else z keeps its graph)
                    z = refined.detach().requires_grad_(True)
                    raw, loss, terms, max_att = self._loss(z, t, None)
            skipped = [False] * b
            if i < self.guided:
                new, bad = self._update(z, loss, eta)
                skipped = bad.tolist()
            else:
                new = z.detach()
        if i in self.record:
            self.diagnostics.maps[i] = subject_maps(raw.detach(), self.subjects).cpu()
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

    def _refine(self, z, t, loss, max_att, threshold: float, eta: float):
        """Iterative refinement (Attend-and-Excite): per sample, update until ``1 - min_g max A_g <= 1 - threshold``.

        Each iteration re-runs the guided forward pass on the samples still below the threshold, at most
        ``max_refinement_steps`` times; the criterion uses the loss computed before that iteration's update, as in
        the reference implementation.
        """
        target = max(0.0, 1.0 - threshold)
        crit = _neglect(max_att)
        z = z.detach().clone()
        iters = torch.zeros(z.shape[0], dtype=torch.long)
        active = (crit > target) & (iters < self.cfg.max_refinement_steps)
        while bool(active.any()):
            rows = active.nonzero().flatten()
            iters[rows] += 1
            zr = z[rows].clone().requires_grad_(True)
            _, lr, _, mr = self._loss(zr, t, rows)
            new, _ = self._update(zr, lr, eta)
            z[rows] = new
            crit[rows] = _neglect(mr.detach())
            active = (crit > target) & (iters < self.cfg.max_refinement_steps)
        return z, iters.tolist()


def _neglect(max_att: torch.Tensor) -> torch.Tensor:
    """``max_g max(0, 1 - max A_g)`` per sample: Attend-and-Excite's loss, the refinement criterion."""
    return (1.0 - max_att.detach()).clamp_min(0).amax(dim=1)


def _floats(x) -> list[float]:
    return [float(v) if math.isfinite(float(v)) else float("nan") for v in torch.as_tensor(x).detach().flatten()]
