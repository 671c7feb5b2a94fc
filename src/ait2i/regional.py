"""Regional adapters: each LoRA adapter acts only where its subject is.

Two LoRAs trained apart and loaded together (diffusers' ``set_adapters``) add their low-rank updates on the same
layers everywhere in the picture: on the ShapesWorld concepts the model stops drawing shapes at adapter weight 1,
and at 0.7 both concepts are there in 0.11 of images (``docs/results/personalization.md``). With
``ait2i.generate(..., regional_adapters={"star-lora": "red star", "ring-lora": "blue ring"})`` each named adapter's
update (the output of peft's ``lora_B`` for that adapter, in every layer it adapts) is multiplied by a mask of where
its subject is:

- **image-side layers** of the UNet (convolutions, self-attention, feed-forward, the cross-attention queries): a
  spatial mask from the subject's cross-attention map (the mean over heads and over the host's read layers, the
  cross-attention layers at its read resolution, :func:`~ait2i.capture.unet.default_read_res`) of the previous UNet
  call. The map is divided by its maximum and ramped from ``low`` (mask 0) to ``high`` (mask 1), and a pixel
  belongs to at most one regional subject, the one whose normalised map is largest there. Before the first map
  (the first UNet call of the run) the mask is ``first`` everywhere.
- **text-side layers** (the text encoder's, and the keys and values of the UNet's cross-attention): the subject's
  own tokens only, in the prompt's rows; the negative (unconditional) prompt gets no update from a regional
  adapter.
- layers with neither a spatial nor a token axis (e.g. a LoRA on a time-embedding projection) keep the full update.

Adapters not named keep acting everywhere at their ``set_adapters`` weight. The hooks are removed when the call
ends, also when it fails. Supported where the host says so (``Host.regional_adapters``: ``StableDiffusionPipeline``,
one CLIP text encoder and a UNet); other pipelines are refused before anything runs. The masks are per image
(``num_images_per_prompt`` > 1 works).

Measured on the ShapesWorld star and ring LoRAs in ``docs/results/personalization.md`` ("Regional adapters").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class RegionalAdapters:
    """Which adapter acts where: ``adapters`` maps a loaded, active LoRA adapter name to its subject (a phrase of
    the prompt as given to ``subjects``, or the subject's index in ``subjects``).

    Args:
        adapters (`Mapping[str, str | int]`): adapter name -> subject.
        low (`float`, *optional*, defaults to 0.05): normalised map value under which the mask is 0.
        high (`float`, *optional*, defaults to 0.2): normalised map value from which the mask is 1.
        first (`float`, *optional*, defaults to 0.5): the mask everywhere before the first map.
    """

    adapters: Mapping[str, str | int]
    low: float = 0.05
    high: float = 0.2
    first: float = 0.5

    def __post_init__(self):
        if not isinstance(self.adapters, Mapping) or not self.adapters:
            raise ValueError(
                "regional_adapters must map at least one adapter name to its subject, e.g. "
                "{'star-lora': 'red star', 'ring-lora': 'blue ring'}"
            )
        for name, subject in self.adapters.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"regional_adapters: adapter names are strings, got {name!r}")
            if isinstance(subject, bool) or not isinstance(subject, (str, int)):
                raise ValueError(
                    f"regional_adapters[{name!r}] must be a subject phrase or a subject index, got {subject!r}"
                )
        for k in ("low", "high", "first"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
                raise ValueError(f"regional {k} must be a number in [0, 1], got {v!r}")
        if not self.low < self.high:
            raise ValueError(f"regional low must be below high, got low={self.low}, high={self.high}")
        self.adapters = dict(self.adapters)

    @classmethod
    def parse(cls, value) -> RegionalAdapters | None:
        """``None``, a :class:`RegionalAdapters`, or a mapping adapter -> subject (default ramps)."""
        if value is None or isinstance(value, RegionalAdapters):
            return value
        return cls(value)

    def to_dict(self) -> dict:
        return {"adapters": dict(self.adapters), "low": self.low, "high": self.high, "first": self.first}


def active_adapters(pipe, merged: bool = False) -> dict[str, list[str]]:
    """``{component: [active adapter names]}`` of the pipeline's UNet and text encoder (peft adapters only);
    ``merged``: the adapters fused into the weights instead (``pipe.fuse_lora``), whose updates no hook can see."""
    out = {}
    for comp in ("unet", "text_encoder"):
        model = getattr(pipe, comp, None)
        names = set()
        for _, mod in model.named_modules() if model is not None else ():
            active = getattr(mod, "merged_adapters" if merged else "active_adapters", None)
            if active is not None and hasattr(mod, "lora_B"):
                names.update(active if isinstance(active, (list, tuple)) else [active])
        out[comp] = sorted(names)
    return out


@dataclass
class _State:
    images: int
    token_masks: dict[str, torch.Tensor]  # adapter -> (77,)
    prompt_ids: torch.Tensor
    latent_hw: tuple[int, int] | None = None
    read_hw: tuple[int, int] | None = None
    masks: dict[str, torch.Tensor] | None = None  # adapter -> (images, 1, h, w)
    acc: dict[str, torch.Tensor] = field(default_factory=dict)
    te_prompt: bool = False


class RegionalHooks:
    """The forward hooks of one call (a context manager); see the module docstring.

    Args:
        pipe: the pipeline, its adapters loaded and active.
        spec (`RegionalAdapters`): adapter -> subject, and the mask ramps.
        subjects (`list[Subject]`): the call's resolved subjects, in the order given.
        labels (`list`): the subjects as the caller gave them (phrases), to look the named subjects up.
        prompt (`str`): the prompt (its token ids tell the text encoder's prompt call from the negative one).
        images (`int`): ``num_images_per_prompt``.

    Raises:
        ValueError: an adapter that is not loaded or not active, a subject that is not among ``subjects``, two
            adapters for one subject.
    """

    def __init__(self, pipe, spec: RegionalAdapters, subjects, labels, prompt: str, images: int = 1):
        self.pipe, self.spec = pipe, spec
        active, fused = active_adapters(pipe), active_adapters(pipe, merged=True)
        index: dict = {}  # a subject's index, its label and its phrase as given -> its index (the first one wins)
        for i, (s, given) in enumerate(zip(subjects, labels)):
            for key in (i, s.label, given if isinstance(given, str) else None):
                if key is not None:
                    index.setdefault(key, i)
        tok = pipe.tokenizer
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        self.chosen: dict[str, int] = {}
        for name, subject in spec.adapters.items():
            if name in fused["unet"] or name in fused["text_encoder"]:
                raise ValueError(
                    f"regional_adapters names {name!r}, which is fused into the weights (pipe.fuse_lora): its update "
                    "can no longer be placed; call pipe.unfuse_lora() first"
                )
            if name not in active["unet"]:
                loaded = sorted(set(active["unet"]) | set(active["text_encoder"]))
                raise ValueError(
                    f"regional_adapters names {name!r}, which is not an active LoRA adapter of the UNet; active: "
                    f"{loaded or 'none'} (load it with pipe.load_lora_weights(..., adapter_name={name!r}) and "
                    "activate it with pipe.set_adapters)"
                )
            if subject not in index:
                raise ValueError(
                    f"regional_adapters[{name!r}] = {subject!r} is not one of the subjects "
                    f"{[s.label for s in subjects]} (give the phrase as in subjects, or its index)"
                )
            self.chosen[name] = index[subject]
        twice = [i for i in set(self.chosen.values()) if list(self.chosen.values()).count(i) > 1]
        if twice:
            raise ValueError(f"regional_adapters gives subject {subjects[twice[0]].label!r} two adapters; one each")
        n = ids.input_ids.shape[-1]
        masks = {}
        for name, i in self.chosen.items():
            m = torch.zeros(n)
            m[list(subjects[i].tokens)] = 1  # the noun's pieces (attribute words would pull in other objects)
            masks[name] = m
        self.state = _State(images, masks, ids.input_ids[0])
        self.handles: list = []
        self._attn_handles: dict = {}  # the read layers' hooks, placed once the UNet's input size is known

    # -- context -------------------------------------------------------------------------------------------------
    def __enter__(self):
        pipe = self.pipe
        for comp in ("unet", "text_encoder"):
            model = getattr(pipe, comp, None)
            if model is None:
                continue
            for name, mod in model.named_modules():
                for adapter in self.chosen:
                    if name.endswith(f"lora_B.{adapter}"):
                        self.handles.append(mod.register_forward_hook(self._lora_hook(comp, name, adapter)))
        self.handles.append(pipe.unet.register_forward_pre_hook(self._unet_pre, with_kwargs=True))
        self.handles.append(pipe.unet.register_forward_hook(self._unet_post))
        if getattr(pipe, "text_encoder", None) is not None:
            self.handles.append(pipe.text_encoder.register_forward_pre_hook(self._te_pre, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        for h in self._attn_handles.values():
            h.remove()
        self.handles, self._attn_handles = [], {}
        return False

    # -- the text encoder ----------------------------------------------------------------------------------------
    def _te_pre(self, mod, args, kwargs):
        ids = args[0] if args else kwargs.get("input_ids")
        st = self.state
        st.te_prompt = (
            isinstance(ids, torch.Tensor)
            and ids.shape[-1] == st.prompt_ids.shape[0]
            and bool((ids.reshape(-1, ids.shape[-1]).cpu() == st.prompt_ids).all())
        )

    # -- the UNet --------------------------------------------------------------------------------------------------
    def _unet_pre(self, mod, args, kwargs):
        from .capture.unet import default_read_res, select_layers

        sample = args[0] if args else kwargs["sample"]
        hw = tuple(sample.shape[-2:])
        st = self.state
        if hw != st.latent_hw:
            st.latent_hw = hw
            st.read_hw = tuple(default_read_res(mod, hw, ("up", "down")))
            layers = select_layers(mod, hw, st.read_hw, ("up", "down"))
            wanted = {name.rsplit(".processor", 1)[0] for name in layers}
            for h in self._attn_handles.values():
                h.remove()
            self._attn_handles = {
                name: m.register_forward_hook(self._attn_hook, with_kwargs=True)
                for name, m in mod.named_modules()
                if name in wanted
            }
        st.acc = {}

    def _cond_rows(self, b: int) -> slice | None:
        """The rows of a UNet batch of ``b`` rows that hold the prompt (``None``: a batch this cannot tell)."""
        n = self.state.images
        if b == 2 * n:
            return slice(n, 2 * n)  # diffusers' classifier-free batch: [negative ; prompt]
        if b == n:
            return slice(0, n)
        return None

    def _attn_hook(self, mod, args, kwargs, out):
        hidden = args[0] if args else kwargs.get("hidden_states")
        enc = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        rows = self._cond_rows(hidden.shape[0])
        if enc is None or rows is None:
            return None
        st = self.state
        with torch.no_grad():
            h, e = hidden[rows], enc[rows]
            q, k = mod.to_q(h), mod.to_k(e)
            b, n, c = q.shape
            heads = mod.heads
            q = q.view(b, n, heads, c // heads).transpose(1, 2)
            k = k.view(b, -1, heads, c // heads).transpose(1, 2)
            probs = (q @ k.transpose(-1, -2) * mod.scale).softmax(-1).mean(1)  # (b, n, keys)
            gh, gw = st.read_hw
            for name, tokens in st.token_masks.items():
                m = (probs[..., : tokens.shape[0]] * tokens.to(probs)).sum(-1).reshape(b, gh, gw).float()
                st.acc[name] = st.acc.get(name, 0) + m
        return None

    def _unet_post(self, mod, args, out):
        st = self.state
        if not st.acc:
            return None
        with torch.no_grad():
            names = list(st.acc)
            peak = {a: st.acc[a].flatten(1).amax(1).clamp_min(1e-12)[:, None, None] for a in names}
            norm = torch.stack([st.acc[a] / peak[a] for a in names])
            win = norm.argmax(0)
            lo, hi = self.spec.low, self.spec.high
            st.masks = {
                a: (((norm[i] - lo) / (hi - lo)).clamp(0, 1) * (win == i))[:, None].cpu() for i, a in enumerate(names)
            }
        st.acc = {}
        return None

    # -- the adapters' updates -----------------------------------------------------------------------------------
    def _spatial(self, adapter: str, b: int, hw: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """``(b, 1, h, w)`` mask of ``adapter`` for a batch of ``b`` rows at grid ``hw``."""
        st = self.state
        if st.masks is None:
            return torch.full((b, 1, *hw), self.spec.first, dtype=like.dtype, device=like.device)
        m = F.interpolate(st.masks[adapter], size=hw, mode="bilinear", align_corners=False)
        n = st.images
        if b == 2 * n:
            m = torch.cat([m, m])
        elif b != n:
            m = m.amax(0, keepdim=True).expand(b, -1, -1, -1)  # rows this cannot place: the union of the images'
        return m.to(device=like.device, dtype=like.dtype)

    def _grid(self, tokens: int) -> tuple[int, int] | None:
        h, w = self.state.latent_hw
        for f in (1, 2, 4, 8, 16, 32, 64):
            g = (-(-h // f), -(-w // f))
            if g[0] * g[1] == tokens:
                return g
        return None

    def _lora_hook(self, comp: str, name: str, adapter: str):
        st = self.state
        text_side = comp == "text_encoder" or ".attn2.to_k." in name or ".attn2.to_v." in name

        def hook(mod, args, out):
            if text_side:
                if out.dim() != 3:
                    return out
                keys = out.shape[1]
                tokens = st.token_masks[adapter]
                k = min(keys, tokens.shape[0])
                m = torch.zeros(out.shape[0], keys, 1, dtype=out.dtype, device=out.device)
                if comp == "text_encoder":
                    if st.te_prompt:
                        m[:, :k, 0] = tokens[:k].to(out)
                else:
                    rows = self._cond_rows(out.shape[0])
                    rows = rows if rows is not None else slice(0, out.shape[0])
                    m[rows, :k, 0] = tokens[:k].to(out)
                return out * m
            if out.dim() == 4:
                return out * self._spatial(adapter, out.shape[0], tuple(out.shape[-2:]), out)
            if out.dim() == 3:
                grid = self._grid(out.shape[1])
                if grid is None:
                    return out
                m = self._spatial(adapter, out.shape[0], grid, out)
                return out * m.flatten(2).transpose(1, 2)
            return out

        return hook


def regional_note(hooks: RegionalHooks, subjects) -> str:
    spec = hooks.spec
    pairs = ", ".join(f"{a} -> {subjects[i].label!r}" for a, i in hooks.chosen.items())
    return f"regional adapters: {pairs} (low {spec.low:g}, high {spec.high:g}, first {spec.first:g})"
