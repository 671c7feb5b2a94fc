"""The host interface: how the engine drives one family of diffusers pipelines (docs/method.md, "Hosts and methods").

A host adapter knows, for its pipelines,

- the **text side**: the tokenizer the subjects resolve on, the prompt as the text encoder sees it, its end token;
- the **denoising side**: the conditional embeddings, the timesteps the loop will run, the start latents (the
  pipeline's own draws), and how to run the guided conditional forward pass with everything the denoiser sees
  (ControlNet residuals, mask channels, ...), with cross-attention recorded;
- and how to **run** the pipeline so that the engine updates the latents before every guided step.

:class:`Host` is that interface (what ``generate`` calls). :class:`CallbackHost` implements it for pipelines with
``callback_on_step_end``: it runs the user's pipeline object unmodified, and for the duration of the call only

1. wraps the pipeline's own ``encode_prompt`` and ``prepare_latents`` (and family-specific preparation methods) on
   the instance, to keep what they return: the conditional embeddings exactly as the denoiser gets them (LoRA
   scale, ``clip_skip``, textual inversion included), the loop's timesteps, and the start latents, to which it
   applies the step-0 update before the loop begins;
2. installs attention-capture processors on the selected cross-attention layers;
3. updates the latents of step ``i + 1`` from ``callback_on_step_end`` at the end of step ``i`` (after the user's
   own callback, if any, so the update is computed on the latents the denoiser will see).

Everything is restored when the call ends, also by an exception. A family is a subclass that names its pipeline
classes and overrides the few methods where it differs (see ``sd.py``, ``controlnet.py``).
"""

from __future__ import annotations

import inspect
import math
import numbers
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, ClassVar

import torch

from ..attention import StopForward, capture_attention, select_layers
from ..subjects import end_token_index
from .schedulers import (
    FLOW_MATCHING,
    SUPPORTED_SCHEDULERS,
    check_scheduler,
    evaluations_per_step,
    input_scale,
    starts_step,
)

#: ``make_engine(attend, num_steps) -> GuidanceEngine``: the host builds the engine once it knows the loop.
EngineFactory = Callable[[Callable, int], Any]


class Host:
    """Adapter interface of one pipeline family.

    Class attributes:
        pipelines (`tuple[str, ...]`): names of the pipeline classes this adapter drives (subclasses of them too).
        refused (`dict[str, str]`): call arguments that cannot be guided right, with the reason (refused up front).
    """

    pipelines: ClassVar[tuple[str, ...]] = ()
    refused: ClassVar[dict[str, str]] = {}
    #: The pipeline component whose tokenizer the subjects resolve on (its subfolder in a diffusers folder).
    tokenizer_component: ClassVar[str] = "tokenizer"

    @classmethod
    def subject_tokenizer(cls, pipe):
        """The tokenizer of ``pipe`` the subjects resolve on, before any call (e.g. for a token table)."""
        return getattr(pipe, cls.tokenizer_component)

    def __init__(self, pipe, prompt: str, kwargs: dict):
        self.pipe = pipe
        self.prompt = prompt
        self.kwargs = dict(kwargs)
        self.notes: list[str] = []
        self.check()

    def check(self) -> None:
        """Refuse, before anything runs, what this host cannot guide right (raise `ValueError`/`TypeError`)."""
        for key, why in self.refused.items():
            if self.kwargs.get(key) is not None:
                raise ValueError(f"{type(self.pipe).__name__}: `{key}` is not supported with guidance ({why})")

    # -- text side --------------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The tokenizer whose token indices the subjects and the attention maps use."""
        raise NotImplementedError

    @property
    def text(self) -> str:
        """The prompt as the text encoder sees it."""
        return self.prompt

    @property
    def eot_index(self) -> int:
        """Index of the prompt's end token in the encoder's sequence."""
        return end_token_index(self.tokenizer, self.text)

    # -- running ----------------------------------------------------------------------------------------------
    def run(self, cfg, make_engine: EngineFactory):
        """Run the pipeline with guidance by method ``cfg``; return ``(pipeline output, engine)``."""
        raise NotImplementedError


@contextmanager
def intercept(obj, name: str, wrapper: Callable) -> Iterator[None]:
    """Shadow the method ``obj.name`` on the instance by ``wrapper(original, *args, **kwargs)``; always restore.

    Only calls from the thread that installed it go through ``wrapper``; any other thread gets the original.
    """
    had = name in obj.__dict__
    previous = obj.__dict__.get(name)
    original = getattr(obj, name)
    owner = threading.get_ident()

    def call(*a, **k):
        if threading.get_ident() != owner:
            return original(*a, **k)
        return wrapper(original, *a, **k)

    try:  # pipelines inspect some methods' signatures (scheduler.step: eta, generator)
        call.__signature__ = inspect.signature(original)
    except (TypeError, ValueError):
        pass
    obj.__dict__[name] = call
    try:
        yield
    finally:
        if had:
            obj.__dict__[name] = previous
        else:
            obj.__dict__.pop(name, None)


def _callback_inputs(user_cb, user_inputs) -> list[str]:
    """The tensor inputs the pipeline must hand our callback: the user's (or their callback object's) + latents."""
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    if isinstance(user_cb, (PipelineCallback, MultiPipelineCallbacks)):
        user_inputs = user_cb.tensor_inputs  # what the pipeline itself would use for such an object
    return list(dict.fromkeys([*(user_inputs or ["latents"]), "latents"]))


def check_tokenizers_agree(pipe, prompt: str, first: str = "tokenizer", second: str = "tokenizer_2") -> None:
    """Refuse a prompt that two CLIP tokenizers split differently.

    SDXL and SD3 join the two CLIP encoders' hidden states position by position; subjects index the first
    tokenizer's tokens, so the second must put the same words at the same positions (a "!"-padding tokenizer splits
    "!!" in two, for one).

    Raises:
        ValueError: naming the first differing token and both token lists.
    """
    from ..subjects import format_tokens

    tok1, tok2 = getattr(pipe, first, None), getattr(pipe, second, None)
    if tok1 is None or tok2 is None:
        return  # one text encoder only: nothing to align
    convert = getattr(pipe, "maybe_convert_prompt", None)
    p1, p2 = ((convert(prompt, t) if convert is not None else prompt) for t in (tok1, tok2))

    def pieces(tokenizer, text: str) -> list[str]:
        ids = tokenizer(text, truncation=True, max_length=tokenizer.model_max_length).input_ids
        return [piece.removesuffix("</w>") for piece in tokenizer.convert_ids_to_tokens(ids)]

    a, b = pieces(tok1, p1), pieces(tok2, p2)
    if a == b:
        return
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    raise ValueError(
        f"{type(pipe).__name__}: the two tokenizers split the prompt differently from token {k} on ({first}: "
        f"{a[k] if k < len(a) else '(end)'!r}, {second}: {b[k] if k < len(b) else '(end)'!r}), so a token index "
        f"would name different words in the two text encoders. {first}: {format_tokens(tok1, p1)}; {second}: "
        f"{format_tokens(tok2, p2)}. Rephrase that part of the prompt (or load a textual inversion into both)."
    )


def check_sequence_length(tokenizer, text: str, limit: int) -> None:
    """Refuse a prompt longer than the ``limit`` T5 tokens a pipeline keeps (it would truncate the end silently).

    Raises:
        ValueError: naming the length and the fixes.
    """
    n = len(tokenizer(text).input_ids)
    if n > limit:
        raise ValueError(
            f"the prompt is {n} T5 tokens (with </s>), over max_sequence_length={limit}: the pipeline truncates "
            "it, so its end and any subject there are not encoded; shorten it or raise max_sequence_length"
        )


#: Call arguments that hold a negative prompt (as text).
NEGATIVE_PROMPTS = ("negative_prompt", "negative_prompt_2", "negative_prompt_3")
#: Call arguments that are guidance scales (classifier-free, true CFG, distilled guidance, rescale).
SCALES = ("guidance_scale", "true_cfg_scale", "guidance_rescale")


def _default(pipe, key: str):
    """The default of ``pipe.__call__``'s argument ``key`` (``None`` if it has none)."""
    p = inspect.signature(pipe.__call__).parameters.get(key)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def check_scales(pipe, kwargs: dict) -> None:
    """Refuse a guidance scale that is not a finite number (``nan`` turns classifier-free guidance off silently).

    Raises:
        ValueError: naming the argument and its value.
    """
    for key in SCALES:
        v = kwargs.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{type(pipe).__name__}: {key} must be a finite number, got {v!r}")


def check_negative_prompt(pipe, kwargs: dict, scale: str = "guidance_scale") -> None:
    """Refuse a negative prompt that the pipeline would ignore: it is used only with ``scale > 1``.

    Args:
        pipe: the pipeline (its ``__call__`` gives the default of ``scale``).
        kwargs (`dict`): the call's arguments.
        scale (`str`, *optional*, defaults to `"guidance_scale"`): the argument that turns classifier-free
            guidance on above 1 (``"true_cfg_scale"`` for Flux).

    Raises:
        ValueError: naming the negative prompt argument, the scale and the fixes.
    """
    given = [k for k in NEGATIVE_PROMPTS if kwargs.get(k)]
    if not given:
        return
    value = kwargs.get(scale)
    value = _default(pipe, scale) if value is None else value
    if value is not None and value <= 1:
        raise ValueError(
            f"{type(pipe).__name__} uses a negative prompt only with {scale} > 1 (got {value}): {given[0]} would be "
            f"ignored by the pipeline while recorded as used; pass {scale} > 1 (e.g. 4.0) or drop {given[0]}"
        )


def _latents_shape(kwargs: dict, default_size: int, channels: int, scale: int) -> tuple[int, int, int, int]:
    """``(images, channels, height // scale, width // scale)`` for a call's ``height``/``width`` (or the default)."""
    n = kwargs.get("num_images_per_prompt", 1) or 1
    h = kwargs.get("height") or default_size
    w = kwargs.get("width") or default_size
    return (n, channels, int(h) // scale, int(w) // scale)


#: Substrings of ``diffusers.hooks`` hook names that reuse activations across steps (first-block cache, pyramid
#: attention broadcast, FasterCache, TaylorSeer, MagCache, text KV cache, ...): the guided pass would read stale
#: activations.
CACHE_HOOK_MARKERS = ("cache", "broadcast", "fbc_")


def check_denoiser(pipe) -> None:
    """Refuse a denoiser (``pipe.unet`` or ``pipe.transformer``) whose state the guided pass cannot work with.

    - gradient checkpointing: the guided pass ends at the last read layer, so a checkpointed block would be
      recomputed in the backward pass from a forward pass that never finished;
    - a cache (``enable_cache`` or a ``diffusers.hooks`` cache hook on any submodule): the guided pass would get
      activations cached from other inputs, and the cache would see calls it does not expect.

    Raises:
        ValueError: naming what to switch off.
    """
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if denoiser is None:
        return
    kind = "unet" if getattr(pipe, "unet", None) is denoiser else "transformer"
    name = type(pipe).__name__
    if getattr(denoiser, "is_gradient_checkpointing", False):
        raise ValueError(
            f"{name}: the {kind} has gradient checkpointing on, which the guided pass (a forward pass that stops at "
            f"the last read layer, then a backward pass) cannot use; call pipe.{kind}.disable_gradient_checkpointing()"
        )
    hooks = []
    for module in denoiser.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hooks += [h for h in getattr(registry, "hooks", {}) if any(m in str(h).lower() for m in CACHE_HOOK_MARKERS)]
    if getattr(denoiser, "is_cache_enabled", False) or hooks:
        what = f"cache hooks {sorted(set(hooks))}" if hooks else "a cache (enable_cache)"
        raise ValueError(
            f"{name}: the {kind} has {what}, which would give the guided pass activations cached from other "
            f"inputs; call pipe.{kind}.disable_cache() (or remove the hooks) first"
        )


class CallbackHost(Host):
    """A host for UNet pipelines with ``callback_on_step_end`` (Stable Diffusion 1.x/2.x text-to-image).

    Subclasses override :meth:`denoise` (the guided conditional pass), :meth:`_start_latents` and
    :meth:`_with_start_latents` (where ``prepare_latents`` puts the start latents), and :meth:`preparations`
    (more pipeline methods whose results the guided pass needs).
    """

    pipelines = ()  # abstract: the family modules name their pipelines
    #: Schedulers this family's pipelines can run (``schedulers.SUPPORTED_SCHEDULERS`` less flow matching, which
    #: only the SD3 host's pipelines use); others are refused before the run.
    schedulers: ClassVar[tuple[str, ...]] = tuple(n for n in SUPPORTED_SCHEDULERS if n not in FLOW_MATCHING)
    #: UNet ``addition_embed_type`` values whose inputs this host passes to the guided pass (see
    #: :meth:`added_cond_kwargs`); a UNet with any other added condition is refused.
    added_conditions: ClassVar[tuple[str, ...]] = ()
    refused = {
        "ip_adapter_image": "IP-Adapter image conditioning is not passed to the guided pass yet",
        "ip_adapter_image_embeds": "IP-Adapter image conditioning is not passed to the guided pass yet",
        "prompt_embeds": "subjects are words of the prompt: give the prompt as text",
        "callback": "deprecated by diffusers; use callback_on_step_end",
        "callback_steps": "deprecated by diffusers; use callback_on_step_end",
    }

    def check(self) -> None:
        super().check()
        pipe = self.pipe
        missing = [
            a for a in ("unet", "tokenizer", "scheduler", "encode_prompt", "prepare_latents") if not hasattr(pipe, a)
        ]
        if missing:
            raise TypeError(f"{type(pipe).__name__} has no {', '.join(missing)}; it is not a Stable Diffusion pipeline")
        if "callback_on_step_end" not in inspect.signature(pipe.__call__).parameters:
            raise TypeError(
                f"{type(pipe).__name__}.__call__ has no `callback_on_step_end`, which ait2i drives the denoising "
                "loop through; upgrade diffusers (>= 0.30)"
            )
        if getattr(pipe.unet.config, "time_cond_proj_dim", None) is not None:
            raise TypeError(
                "UNets with a guidance-scale embedding (time_cond_proj_dim: LCM-distilled models) are not supported"
            )
        added = getattr(pipe.unet.config, "addition_embed_type", None)
        if added is not None and added not in self.added_conditions:
            raise TypeError(
                f"this UNet takes added conditions ({added}), which {type(self).__name__} does not pass to the "
                "guided pass; not supported"
            )
        self.check_call_arguments()

    def check_call_arguments(self) -> None:
        """What every family checks alike: the denoiser's state (:func:`check_denoiser`), one generator per image,
        finite guidance scales, a negative prompt only where the pipeline uses it (:func:`check_negative_prompt`),
        start latents of the right shape and finite."""
        check_denoiser(self.pipe)
        n = self.kwargs.get("num_images_per_prompt", 1) or 1
        gen = self.kwargs.get("generator")
        if isinstance(gen, list) and len(gen) != n:
            raise ValueError(f"{len(gen)} generators for num_images_per_prompt={n}; give one per image")
        check_scales(self.pipe, self.kwargs)
        check_negative_prompt(self.pipe, self.kwargs, self.cfg_scale)
        latents = self.kwargs.get("latents")
        if latents is not None:
            if not isinstance(latents, torch.Tensor):
                raise ValueError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
            expected = self.latents_shape()
            if expected is not None and tuple(latents.shape) != expected:
                raise ValueError(
                    f"latents have shape {tuple(latents.shape)}; this call expects {expected} (images, channels, "
                    "height / vae_scale_factor, width / vae_scale_factor for its height, width and "
                    "num_images_per_prompt)"
                )
            if not torch.isfinite(latents).all():
                raise ValueError("latents contain NaN or inf")

    #: The call argument whose value > 1 turns classifier-free guidance on (and the negative prompt with it).
    cfg_scale: ClassVar[str] = "guidance_scale"

    def latents_shape(self) -> tuple[int, ...] | None:
        """The shape ``latents`` must have for this call (``None``: not checked here). UNet pipelines:
        ``(num_images_per_prompt, latent channels, height // vae_scale_factor, width // vae_scale_factor)``."""
        pipe = self.pipe
        unet, vae = getattr(pipe, "unet", None), getattr(pipe, "vae", None)
        size = getattr(getattr(unet, "config", None), "sample_size", None)
        if unet is None or not isinstance(size, int) or not hasattr(pipe, "vae_scale_factor"):
            return None
        channels = vae.config.latent_channels if vae is not None else unet.config.in_channels
        return _latents_shape(self.kwargs, size * pipe.vae_scale_factor, channels, pipe.vae_scale_factor)

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def text(self) -> str:
        convert = getattr(self.pipe, "maybe_convert_prompt", None)  # multi-vector textual-inversion placeholders
        return convert(self.prompt, self.pipe.tokenizer) if convert is not None else self.prompt

    # -- family hooks -----------------------------------------------------------------------------------------
    def _cond_from_encode(self, result) -> torch.Tensor:
        """The conditional embeddings from ``encode_prompt``'s result (before classifier-free concatenation)."""
        return result[0]

    def _start_latents(self, result) -> torch.Tensor:
        """The start latents from ``prepare_latents``'s result."""
        return result

    def _with_start_latents(self, result, latents: torch.Tensor):
        """``prepare_latents``'s result with the start latents replaced."""
        return latents

    def preparations(self) -> dict[str, Callable]:
        """More pipeline methods to wrap: ``{name: handler(result)}``, each handler keeps what it needs.

        ``get_timesteps`` (image-to-image pipelines: the loop's timesteps after ``strength``) is kept by default.
        """
        return {"get_timesteps": self._keep_timesteps}

    def ready_after(self) -> str:
        """The pipeline method after which the guided pass has all it needs (step 0 is updated then)."""
        return "prepare_latents"

    def _keep_timesteps(self, result) -> None:
        self._loop_timesteps = result[0]

    def denoise(self, u: torch.Tensor, t, step: int, rows: torch.Tensor | None, cond: torch.Tensor) -> None:
        """The guided conditional forward pass on the model input ``u`` (rows ``rows`` of the batch)."""
        self.unet(u, t, cond, rows)

    def unet(self, u: torch.Tensor, t, cond: torch.Tensor, rows: torch.Tensor | None = None, **inputs) -> None:
        """The UNet on ``u`` with the call's ``cross_attention_kwargs`` (LoRA scale, processor arguments) and the
        added conditions of rows ``rows`` (:meth:`added_cond_kwargs`)."""
        if self.kwargs.get("cross_attention_kwargs"):
            inputs["cross_attention_kwargs"] = self.kwargs["cross_attention_kwargs"]
        added = self.added_cond_kwargs(rows)
        if added is not None:
            inputs["added_cond_kwargs"] = added
        self.pipe.unet(u, t, encoder_hidden_states=cond, **inputs)

    def added_cond_kwargs(self, rows: torch.Tensor | None) -> dict | None:
        """The UNet's ``added_cond_kwargs`` for the conditional half (rows ``rows``); ``None``: the UNet takes none."""
        return None

    def loop_timesteps(self) -> list:
        """The timesteps the pipeline's loop will run (after ``strength``; a family may cut them further)."""
        loop = self._loop_timesteps if self._loop_timesteps is not None else self.pipe.scheduler.timesteps
        return list(loop)

    def cond_rows(self, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """The conditional half of a tensor the pipeline prepared for its (possibly doubled) batch, rows ``rows``.

        Under classifier-free guidance the pipeline's batch is ``[unconditional ; conditional]``: the last ``B``.
        """
        x = x[-self.cond.shape[0] :]
        return x if rows is None else x[rows]

    def on_callback_outputs(self, outputs: dict) -> None:
        """Follow what the user's callback changed (e.g. ``prompt_embeds``) so the guided pass sees it too."""
        emb = outputs.get("prompt_embeds")
        if isinstance(emb, torch.Tensor) and self.cond is not None:
            b = self.cond.shape[0]
            if emb.shape[0] == 2 * b:
                self.cond = emb[b:]
            elif emb.shape[0] == b:
                self.cond = emb

    def reset(self) -> None:
        """Per-call state of a family (called at the start of :meth:`run`)."""

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self, cfg, make_engine: EngineFactory):
        pipe, kw = self.pipe, dict(self.kwargs)
        self.notes += [n for n in [check_scheduler(pipe.scheduler, self.schedulers)] if n]  # before anything runs
        self.reset()
        self._cfg = cfg
        self._loop_timesteps = None
        self.cond: torch.Tensor | None = None
        self.engine = None
        self._stack = ExitStack()
        with self._stack:
            self._wrap_preparations(make_engine)
            out = self.call(kw)
        if self.engine is None:
            raise RuntimeError(f"{type(pipe).__name__} never prepared its latents through prepare_latents")
        return out, self.engine

    def _wrap_preparations(self, make_engine: EngineFactory) -> None:
        """Wrap ``encode_prompt``, ``prepare_latents`` and :meth:`preparations` on the pipeline for the call."""
        pipe = self.pipe

        def on_encode(original, *a, **k):
            result = original(*a, **k)
            self.cond = self._cond_from_encode(result).detach()
            if not torch.isfinite(self.cond).all():
                raise ValueError(
                    f"{type(pipe).__name__}: the text encoder's embeddings of the prompt hold NaN or inf (a loaded "
                    "textual-inversion embedding, LoRA or text-encoder weight with NaN?), so the denoiser would "
                    "produce a NaN image and no update could be computed; check the loaded concepts and weights"
                )
            return result

        def on_prepare_latents(original, *a, **k):
            result = original(*a, **k)
            z = self._start_latents(result)
            if self.ready_after() == "prepare_latents":
                self._begin(make_engine, z)
                return self._with_start_latents(result, self._update(0, z))
            # The guided pass needs something the pipeline prepares later: own the start latents now and update
            # them in place once it is there (the pipeline's loop holds this very tensor).
            self._z0 = z.clone()
            return self._with_start_latents(result, self._z0)

        def when_ready(original, *a, **k):
            result = original(*a, **k)
            if self.engine is None:  # the first call only (a method may be called again during the loop)
                self._begin(make_engine, self._z0)
                self._z0.copy_(self._update(0, self._z0))
            return result

        self._stack.enter_context(intercept(pipe, "encode_prompt", on_encode))
        self._stack.enter_context(intercept(pipe, "prepare_latents", on_prepare_latents))
        for name, keep in self.preparations().items():
            if hasattr(pipe, name):
                self._stack.enter_context(intercept(pipe, name, _keeper(keep)))
        if self.ready_after() != "prepare_latents":
            self._stack.enter_context(intercept(pipe, self.ready_after(), when_ready))

    def call(self, kw: dict):
        """Run the pipeline; :meth:`after_step` updates the latents from ``callback_on_step_end``."""
        user_cb = kw.pop("callback_on_step_end", None)
        inputs = _callback_inputs(user_cb, kw.pop("callback_on_step_end_tensor_inputs", None))

        def on_step_end(p, i, t, callback_kwargs):
            out = {}
            if user_cb is not None:
                out = dict(user_cb(p, i, t, callback_kwargs) or {})
                self.on_callback_outputs(out)
            out["latents"] = self.after_step(i, out.get("latents", callback_kwargs["latents"]))
            return out

        return self.pipe(self.prompt, callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=inputs, **kw)

    def after_step(self, i: int, latents: torch.Tensor) -> torch.Tensor:
        """The latents the loop continues with after loop index ``i``: updated for ``i + 1`` (none after the last)."""
        return self._update(i + 1, latents) if i + 1 < len(self.loop) else latents

    def _begin(self, make_engine: EngineFactory, z: torch.Tensor) -> None:
        """Before the loop: the loop's timesteps, the attention layers at this size, the engine."""
        pipe = self.pipe
        if self.cond is None:
            raise RuntimeError(f"{type(pipe).__name__} prepared latents before encoding the prompt")
        self.loop = self.loop_timesteps()
        self.per_step = evaluations_per_step(pipe.scheduler)
        # Loop index -> engine step (second-order samplers: only first evaluations start a step).
        self.steps = {j: j // self.per_step for j in range(0, len(self.loop), self.per_step)}
        self._store = self._stack.enter_context(self.capture(z))
        self.engine = make_engine(self._attend, len(self.steps))
        self.engine.diagnostics.notes.extend(self.notes)

    def capture(self, z: torch.Tensor):
        """Context manager installing attention capture for start latents ``z``; yields the store.

        The store is started and stopped around :meth:`denoise` and returns ``(b, h, w, L)`` maps. Default: the
        UNet's cross-attention layers at ``cfg.attn_res`` in ``cfg.from_where``.
        """
        latent_hw = tuple(z.shape[-2:])
        scale = self.pipe.vae_scale_factor
        res = self._attn_res(latent_hw[0] * scale, latent_hw[1] * scale)
        layers = select_layers(self.pipe.unet, latent_hw, res, self._cfg.from_where)
        return capture_attention(self.pipe.unet, layers, res)

    def _attn_res(self, height: int, width: int) -> tuple[int, int]:
        if self._cfg.attn_res is None:
            return math.ceil(height / 32), math.ceil(width / 32)
        return self._cfg.attn_res, self._cfg.attn_res

    def _attend(self, u: torch.Tensor, t, rows: torch.Tensor | None) -> torch.Tensor:
        cond = self.cond if rows is None else self.cond[rows]
        self._store.start()
        try:
            self.denoise(u, t, self._loop_index, rows, cond)
        except StopForward:
            pass
        finally:
            self._store.stop()
        return self._store.maps()

    def _update(self, j: int, z: torch.Tensor) -> torch.Tensor:
        """Latents for loop index ``j``: updated in the model-input space if ``j`` starts a guided step."""
        if (j in self.steps) != starts_step(self.pipe.scheduler):
            raise RuntimeError(f"{type(self.pipe.scheduler).__name__}: loop index {j} is out of step")
        if j not in self.steps:  # a second evaluation of a second-order step: the step started earlier
            return z
        k = self.steps[j]
        if not self.engine.needs_step(k):
            return z
        t = self.loop[j]
        self._loop_index = j
        c = input_scale(self.pipe.scheduler, t, z)
        if c == 1.0:
            return self.engine.step(k, t, z)
        u = (z.float() * c).to(z.dtype)
        delta = self.engine.step(k, t, u).float() - u.float()  # exactly 0 where nothing moved (recording, skips)
        return (z.float() + delta / c).to(z.dtype) if bool(delta.any()) else z


def _keeper(keep: Callable) -> Callable:
    def wrapper(original, *a, **k):
        result = original(*a, **k)
        keep(result)
        return result

    return wrapper
