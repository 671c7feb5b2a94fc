"""Cross-attention capture on a ``UNet2DConditionModel`` (docs/method.md, section 1).

:func:`capture_attention` installs a :class:`CaptureProcessor` on the cross-attention layers (``attn2``) that run at
the requested resolution in the requested UNet parts (:func:`select_layers`). The processor records
``softmax(QK^T / sqrt(d))`` only while the store is recording (the guided forward pass); every other call, and every
other layer, runs the original (fused) processor. :class:`CaptureProcessor` is the cross-attention processor of every
denoiser with ``Attention`` cross-attention layers (a DiT's ``attn2`` too, :mod:`ait2i.capture.dit`).

While recording, the guided forward pass stops as soon as the last selected layer has been recorded: the rest of
the UNet (the expensive high-resolution up blocks) does not influence the maps, so neither its forward nor its
backward pass is computed.
"""

from __future__ import annotations

import math

import torch

from .store import DEFAULT_READ_SIDE, AttentionStore, WrappingProcessor, install_capture


class CaptureProcessor(WrappingProcessor):
    """Records the cross-attention probabilities of one layer while its store records; else defers to ``original``.

    The processor is called exactly as the layer's original processor would be: the same positional and keyword
    arguments reach ``original`` (sliced attention, legacy processors with a positional signature, processors with
    extra ``cross_attention_kwargs``), and ``inspect.signature(processor.__call__)`` is the original's, so that
    ``Attention.forward`` passes it the same keyword arguments. While recording, the probabilities
    ``softmax(QK^T/sqrt(d))`` are computed from the layer's projections; the output is computed from them
    directly when the original is diffusers' plain ``AttnProcessor``/``AttnProcessor2_0`` (the same arithmetic as
    the Attend-and-Excite reference), and by the original processor otherwise (so that what it adds, e.g. extra
    keyword arguments, still applies).
    """

    def _call(self, attn, hidden_states, *args, **kwargs):
        encoder_hidden_states = kwargs.get("encoder_hidden_states", args[0] if args else None)
        if not self.store.recording or encoder_hidden_states is None:
            return self.original(attn, hidden_states, *args, **kwargs)
        attention_mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        temb = kwargs.get("temb", args[2] if len(args) > 2 else None)
        plain = type(self.original).__name__ in _PLAIN and not (set(kwargs) - _PLAIN_KWARGS) and len(args) <= 3
        probs, out = _probabilities(attn, hidden_states, encoder_hidden_states, attention_mask, temb, plain)
        if out is None:
            out = self.original(attn, hidden_states, *args, **kwargs)
        self.store.add(self.name, probs, attn.heads)  # may end the forward pass (StopForward)
        return out


_PLAIN = {"AttnProcessor", "AttnProcessor2_0"}
_PLAIN_KWARGS = {"encoder_hidden_states", "attention_mask", "temb"}


def _probabilities(attn, hidden_states, encoder_hidden_states, attention_mask, temb, with_output: bool):
    """``(B * heads, Q, L)`` probabilities of a cross-attention call, and its output when ``with_output``.

    The steps are those of diffusers' ``AttnProcessor`` (spatial norm, 4-D inputs, group norm, ``norm_cross``).
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    batch, seq_len, _ = encoder_hidden_states.shape
    attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)  # (B, Q, C)
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)  # (B, L, C)
    query, key = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key)  # (B*heads, ., C/heads)
    probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, Q, L)
    if not with_output:
        return probs, None
    value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
    out = attn.batch_to_head_dim(torch.bmm(probs, value))
    out = attn.to_out[1](attn.to_out[0](out))
    if input_ndim == 4:
        out = out.transpose(-1, -2).reshape(batch, channel, height, width)
    if attn.residual_connection:
        out = out + residual
    return probs, out / attn.rescale_output_factor


def _place(name: str) -> str | None:
    for prefix, place in (("down_blocks", "down"), ("mid_block", "mid"), ("up_blocks", "up")):
        if name.startswith(prefix):
            return place
    return None


def cross_attention_resolutions(unet, latent_hw: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Map each cross-attention processor name of a ``UNet2DConditionModel`` to the (h, w) of its queries.

    Down block ``k`` runs at the latent size halved ``k`` times (stride-2 convolutions: ``ceil(s / 2)``), the mid
    block at the smallest size, up block ``j`` at the size of down block ``n - 1 - j``.
    """
    n = len(unet.down_blocks)
    sizes = [tuple(latent_hw)]
    for _ in range(n - 1):
        sizes.append(tuple(math.ceil(s / 2) for s in sizes[-1]))
    out = {}
    for name in unet.attn_processors:
        if ".attn2." not in name and not name.startswith("attn2"):
            continue
        parts = name.split(".")
        place = _place(name)
        if place == "down":
            out[name] = sizes[int(parts[1])]
        elif place == "up":
            out[name] = sizes[n - 1 - int(parts[1])]
        elif place == "mid":
            out[name] = sizes[-1]
    return out


def default_read_res(unet, latent_hw: tuple[int, int], from_where) -> tuple[int, int]:
    """The resolution a UNet host reads when ``attn_res`` is ``None``: the coarsest cross-attention resolution of
    the parts ``from_where`` whose shorter side is at least :data:`DEFAULT_READ_SIDE` (16x16 for SD 1.x at 512 px
    and for the ShapesWorld UNet, 24x24 for SD 2.x at 768 px, 32x32 for SDXL at 1024 px); a UNet with none that
    large reads its finest. (A part with no cross-attention is left to :func:`select_layers` to refuse.)"""
    check_unet(unet)
    table = cross_attention_resolutions(unet, latent_hw)
    where = sorted({r for n, r in table.items() if _place(n) in from_where}, key=lambda r: (min(r), r))
    if not where:
        return tuple(latent_hw)  # select_layers refuses it, listing what the model has
    large = [r for r in where if min(r) >= DEFAULT_READ_SIDE]
    return large[0] if large else where[-1]


def check_unet(unet) -> None:
    """Raises ``TypeError`` for a denoiser that is not a ``UNet2DConditionModel``-like UNet."""
    if not all(hasattr(unet, a) for a in ("down_blocks", "up_blocks", "attn_processors", "set_attn_processor")):
        raise TypeError(
            f"{type(unet).__name__} is not supported: attention capture needs a UNet2DConditionModel "
            "(Stable Diffusion 1.x/2.x pipelines)"
        )


def select_layers(unet, latent_hw: tuple[int, int], res: tuple[int, int], from_where) -> list[str]:
    """Cross-attention layers at resolution ``res`` in the UNet parts ``from_where``.

    Raises:
        TypeError: the denoiser is not a ``UNet2DConditionModel``-like UNet.
        ValueError: no cross-attention layer runs at ``res`` for this image size; lists the resolutions that do.
    """
    check_unet(unet)
    table = cross_attention_resolutions(unet, latent_hw)
    chosen = [n for n, r in table.items() if r == tuple(res) and _place(n) in from_where]
    if not chosen:
        have = sorted({r for r in table.values()}, reverse=True)
        where = sorted({r for n, r in table.items() if _place(n) in from_where}, reverse=True)
        raise ValueError(
            f"attention resolution {res[0]}x{res[1]} is never produced by this model's cross-attention "
            f"{'/'.join(from_where)} layers at this image size (latents {latent_hw[0]}x{latent_hw[1]}); "
            f"it produces {', '.join(f'{h}x{w}' for h, w in where) or 'none there'} "
            f"(all parts: {', '.join(f'{h}x{w}' for h, w in have)}). Set attn_res to one of these, or None for the "
            "host's default."
        )
    return chosen


def capture_attention(unet, layers: list[str], res: tuple[int, int]):
    """Install :class:`CaptureProcessor` on ``layers``; yield the :class:`~ait2i.capture.store.AttentionStore`;
    always restore."""
    return install_capture(unet, AttentionStore(res, layers), CaptureProcessor)
