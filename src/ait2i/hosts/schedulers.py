"""Which diffusers schedulers guidance is right under, and what each does with a latent update.

The engine updates the latents the denoiser will see at the next step. Whether that update reaches the image
depends on the scheduler's ``step``: most use the sample they are given; some restart from a sample they stored
(PNDM's second step, the second evaluation of second-order samplers, UniPC's corrector). Every scheduler here was
checked for that and is tested (guidance off = the stock images; guided runs record finite losses). Any other
scheduler is refused up front: a quiet weaker (or void) guidance is worse than an error.

**The update space.** Sigma-scaled schedulers (Euler, LMS, Heun, KDPM2) keep latents ``z`` with
``std ≈ sqrt(sigma^2 + 1)``; the denoiser sees ``u = scale_model_input(z) = c z``. The update is taken on ``u`` (the
references' unit-variance space, where one step size means one strength under every scheduler) and mapped back:
``z <- (u - eta grad_u L) / c``. For DDIM, PNDM, DPM-Solver, UniPC, DEIS and DDPM ``c = 1`` and nothing changes.
"""

from __future__ import annotations

#: Supported scheduler classes -> a note for the diagnostics ("" when an update acts fully).
SUPPORTED_SCHEDULERS: dict[str, str] = {
    "DDIMScheduler": "",
    "DDPMScheduler": "",
    "PNDMScheduler": (
        "PNDM (PLMS) restarts its second step from the sample it stored at the first step: the latent update of "
        "step 1 reaches the image only through the noise prediction made on it (steps 0 and 2+ act fully)"
    ),
    "LMSDiscreteScheduler": "",
    "EulerDiscreteScheduler": "",
    "EulerAncestralDiscreteScheduler": "",
    "HeunDiscreteScheduler": (
        "second-order sampler: each step evaluates the model twice and finishes from the sample of its first "
        "evaluation, so guidance updates the latents before first evaluations only (one update per step)"
    ),
    "KDPM2DiscreteScheduler": (
        "second-order sampler: guidance updates the latents before first evaluations only (one update per step)"
    ),
    "KDPM2AncestralDiscreteScheduler": (
        "second-order sampler: guidance updates the latents before first evaluations only (one update per step)"
    ),
    "DPMSolverMultistepScheduler": "",
    "DEISMultistepScheduler": "",
    "FlowMatchEulerDiscreteScheduler": "",  # no scale_model_input (c = 1); step starts from the given latents
    "UniPCMultistepScheduler": (
        "UniPC's corrector rebuilds each step's latents from the previous step's sample and the data prediction "
        "at the updated latents: an update acts through that prediction, weaker than with DDIM"
    ),
}

#: Short names (CLI ``--scheduler``, tests) -> supported scheduler classes.
SCHEDULER_NAMES: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "kdpm2": "KDPM2DiscreteScheduler",
    "kdpm2_a": "KDPM2AncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "deis": "DEISMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


#: Short names whose scheduler needs a package that ait2i does not install.
SCHEDULER_NEEDS: dict[str, str] = {"lms": "scipy"}


def check_scheduler_name(name: str | None) -> None:
    """Refuse, before anything loads, a ``--scheduler`` short name that is unknown or whose package is missing.

    ``None`` and ``"default"`` (the model's own scheduler) pass.
    """
    import importlib.util

    if name in (None, "default"):
        return
    if name not in SCHEDULER_NAMES:
        raise ValueError(f"unknown scheduler {name!r}; expected default or one of {', '.join(SCHEDULER_NAMES)}")
    package = SCHEDULER_NEEDS.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise ValueError(
            f"--scheduler {name} needs {package}, which is not installed: pip install {package}, or choose another "
            "--scheduler"
        )


def scheduler_from_name(name: str, config):
    """A supported scheduler by short name (:data:`SCHEDULER_NAMES`) built from another scheduler's ``config``.

    PNDM gets ``skip_prk_steps=True`` (Stable Diffusion's setting; the Runge-Kutta warm-up is not supported). LMS
    needs scipy.
    """
    import diffusers

    if name not in SCHEDULER_NAMES:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULER_NAMES)}")
    extra = {"skip_prk_steps": True} if name == "pndm" else {}
    return getattr(diffusers, SCHEDULER_NAMES[name]).from_config(config, **extra)


#: Refused with a reason that says more than "not supported".
REFUSED_SCHEDULERS: dict[str, str] = {
    "DPMSolverSinglestepScheduler": "its multi-stage steps restart from a stored sample and discard latent updates",
    "LCMScheduler": "consistency sampling with a handful of steps has no guided window to speak of",
}


#: Flow-matching schedulers: for the pipelines trained with them (SD3, Flux), not interchangeable with the others.
FLOW_SCHEDULERS: tuple[str, ...] = ("FlowMatchEulerDiscreteScheduler",)


def check_scheduler(scheduler, allowed=None) -> str:
    """The diagnostics note for ``scheduler``; raise `TypeError` if guidance is not right under it.

    Args:
        scheduler: the pipeline's scheduler.
        allowed (`Sequence[str]`, *optional*): the scheduler classes the host's pipelines run (default: all of
            :data:`SUPPORTED_SCHEDULERS`).

    Raises:
        TypeError: an unsupported scheduler (the message lists the supported ones), or PNDM with PRK steps.
    """
    name = type(scheduler).__name__
    allowed = list(allowed) if allowed is not None else list(SUPPORTED_SCHEDULERS)
    if name not in allowed:
        why = REFUSED_SCHEDULERS.get(name, "it has not been checked for what it does with a latent update")
        if name in SUPPORTED_SCHEDULERS:
            why = "not with this pipeline family"
        raise TypeError(
            f"scheduler {name} is not supported ({why}); supported: {', '.join(allowed)}. "
            f"Swap it, e.g. pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)"
        )
    if name == "PNDMScheduler" and not scheduler.config.get("skip_prk_steps", False):
        raise TypeError(
            "PNDMScheduler with Runge-Kutta warm-up steps (skip_prk_steps=False) is not supported: those steps "
            "restart from stored samples. Use PNDMScheduler.from_config(config, skip_prk_steps=True) (Stable "
            "Diffusion's setting) or DDIMScheduler"
        )
    return SUPPORTED_SCHEDULERS[name]


def evaluations_per_step(scheduler) -> int:
    """2 for second-order samplers (two model evaluations per step, the first starts the step), else 1."""
    return 2 if hasattr(type(scheduler), "state_in_first_order") else 1


def starts_step(scheduler) -> bool:
    """Whether the scheduler's next model evaluation starts a step (always, except second evaluations)."""
    return evaluations_per_step(scheduler) == 1 or bool(scheduler.state_in_first_order)


def input_scale(scheduler, t, like) -> float:
    """``c`` with ``scale_model_input(z, t) == c * z`` for the scheduler's current step (1.0 when unscaled)."""
    import torch

    if not hasattr(scheduler, "scale_model_input"):  # flow matching: the model sees the latents themselves
        return 1.0
    one = torch.ones(1, device=like.device, dtype=torch.float32)
    return float(scheduler.scale_model_input(one, t))
