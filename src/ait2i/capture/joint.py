"""Capture of MM-DiT joint attention: image queries x text keys of one softmax over ``[image ; text]`` (SD3) or
``[text ; image]`` with rotary positions (Flux's double-stream blocks).

An MM-DiT block has no cross-attention: image and text tokens attend jointly. A subject's map is the image-query x
text-key block of that attention, recomputed from the block's own projections and norms (and rotations) while the
store records; the original processor computes the block's output as it would. What the maps mean and which blocks
are read is the hosts' choice (:mod:`ait2i.hosts.sd3`, :mod:`ait2i.hosts.flux`).
"""

from __future__ import annotations

import torch

from .store import AttentionStore, Reads, WrappingProcessor, capture_blocks

#: How SD3's image-query x CLIP-key probabilities are normalised (see :mod:`ait2i.hosts.sd3`).
MAP_NORMALISATIONS = ("clip", "text", "joint")

#: How Flux's image-query x text-key probabilities are normalised: within the joint softmax, or over the text keys.
FLUX_NORMALISATIONS = ("joint", "text")

#: Positional parameters of ``FluxAttention.forward``'s call to its processor, after ``attn`` and ``hidden_states``.
_PROCESSOR_ARGS = ("encoder_hidden_states", "attention_mask", "image_rotary_emb")


def joint_text_probabilities(attn, hidden_states, context, n_keys: int, normalise: str = "joint") -> torch.Tensor:
    """Image-query x text-key attention probabilities of one joint-attention call, ``(B * heads, N_img, n_keys)``.

    Args:
        attn (`Attention`): the block's joint attention (``JointAttnProcessor2_0`` layout: ``to_q``/``to_k`` on the
            image stream, ``add_k_proj`` on the context, optional RMS/layer norms on queries and keys).
        hidden_states (`torch.Tensor` of shape `(B, N_img, C)`): the image tokens.
        context (`torch.Tensor` of shape `(B, N_text, C_ctx)`): the text tokens.
        n_keys (`int`): the first ``n_keys`` text keys are returned (77: the CLIP part).
        normalise (`str`, *optional*, defaults to `"joint"`): ``"clip"``: softmax over the first ``n_keys`` text
            keys; ``"text"``: softmax over all text keys; ``"joint"``: the joint softmax (image + text keys).
    """
    if normalise not in MAP_NORMALISATIONS:
        raise ValueError(f"normalise must be one of {MAP_NORMALISATIONS}, got {normalise!r}")
    b, heads = hidden_states.shape[0], attn.heads

    def split(x, norm):
        x = x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)
        return (norm(x) if norm is not None else x).float()

    q = split(attn.to_q(hidden_states), attn.norm_q)  # (B, heads, N_img, d)
    scale = q.shape[-1] ** -0.5  # scaled_dot_product_attention's default, as JointAttnProcessor2_0 uses
    keys = split(attn.add_k_proj(context), attn.norm_added_k)
    if normalise == "clip":
        keys = keys[:, :, :n_keys]
    logits = q @ keys.transpose(-1, -2) * scale  # (B, heads, N_img, N_text or n_keys)
    if normalise == "joint":
        image_logits = q @ split(attn.to_k(hidden_states), attn.norm_k).transpose(-1, -2) * scale
        lse = torch.logsumexp(torch.cat([image_logits, logits], dim=-1), dim=-1, keepdim=True)
        probs = torch.exp(logits[..., :n_keys] - lse)
    else:
        probs = logits.softmax(-1)[..., :n_keys]
    return probs.reshape(b * heads, probs.shape[2], n_keys)


class JointCaptureProcessor(WrappingProcessor):
    """Records one joint-attention block's image-to-CLIP-token probabilities while its store records.

    Every call reaches ``original`` with the same arguments (and ``inspect.signature(processor.__call__)`` is the
    original's, so that ``Attention.forward`` passes it the same keyword arguments), except the last read block of
    a recording pass, which ends the pass (:class:`~ait2i.capture.store.StopForward`) before computing its output.
    """

    def __init__(self, store: AttentionStore, name: str, original, n_keys: int, normalise: str):
        super().__init__(store, name, original)
        self.n_keys, self.normalise = n_keys, normalise

    def _call(self, attn, hidden_states, *args, **kwargs):
        context = kwargs.get("encoder_hidden_states", args[0] if args else None)
        if self.store.recording and context is not None:
            probs = joint_text_probabilities(attn, hidden_states, context, self.n_keys, self.normalise)
            self.store.add(self.name, probs, attn.heads)  # may end the forward pass (StopForward)
        return self.original(attn, hidden_states, *args, **kwargs)


def capture_joint_attention(transformer, reads: Reads, n_keys: int = 77, normalise: str = "joint"):
    """Install :class:`JointCaptureProcessor` on the joint attention ``reads.layers``; yield the store; always
    restore."""

    def make(store, name, original):
        return JointCaptureProcessor(store, name, original, n_keys, normalise)

    return capture_blocks(transformer, reads, make, "joint attention")


def flux_text_probabilities(attn, hidden_states, context, rotary, normalise: str = "joint") -> torch.Tensor:
    """Image-query x text-key probabilities of one Flux double-stream attention call, ``(B * heads, N_img, N_txt)``.

    Args:
        attn (`FluxAttention`): the block's attention (``to_q``/``to_k`` on the image stream, ``add_q_proj``/
            ``add_k_proj`` on the text stream, RMS norms per head).
        hidden_states (`torch.Tensor` of shape `(B, N_img, C)`): the image tokens.
        context (`torch.Tensor` of shape `(B, N_txt, C)`): the text tokens.
        rotary (`tuple[torch.Tensor, torch.Tensor]` or `None`): the ``(cos, sin)`` rotary embedding of the joint
            sequence ``[text ; image]``, as the transformer passes it.
        normalise (`str`, *optional*, defaults to `"joint"`): ``"joint"``: the softmax over all keys (text and
            image); ``"text"``: the softmax over the text keys.
    """
    from diffusers.models.embeddings import apply_rotary_emb

    if normalise not in FLUX_NORMALISATIONS:
        raise ValueError(f"normalise must be one of {FLUX_NORMALISATIONS}, got {normalise!r}")
    d = attn.head_dim

    def heads(x, norm):
        return norm(x.unflatten(-1, (-1, d)))  # (B, N, heads, d)

    n_txt = context.shape[1]
    query = heads(attn.to_q(hidden_states), attn.norm_q)  # the image queries only (the text ones are not read)
    key = torch.cat(
        [heads(attn.add_k_proj(context), attn.norm_added_k), heads(attn.to_k(hidden_states), attn.norm_k)], 1
    )
    if rotary is not None:  # (cos, sin) of the joint sequence [text ; image]
        query = apply_rotary_emb(query, tuple(r[n_txt:] for r in rotary), sequence_dim=1)
        key = apply_rotary_emb(key, rotary, sequence_dim=1)
    q = query.transpose(1, 2).float()  # (B, heads, N_img, d)
    k = (key if normalise == "joint" else key[:, :n_txt]).transpose(1, 2).float()
    probs = (q @ k.transpose(-1, -2) * d**-0.5).softmax(-1)[..., :n_txt]  # scaled_dot_product_attention's scale
    b, h, n_img, _ = probs.shape
    return probs.reshape(b * h, n_img, n_txt)


class FluxCaptureProcessor(WrappingProcessor):
    """Records one double-stream block's image-to-text probabilities while its store records (see
    :class:`JointCaptureProcessor`: same arguments to ``original``, same signature)."""

    def __init__(self, store, name: str, original, normalise: str):
        super().__init__(store, name, original)
        self.normalise = normalise

    def _call(self, attn, hidden_states, *args, **kwargs):
        given = {**dict(zip(_PROCESSOR_ARGS, args)), **kwargs}
        context = given.get("encoder_hidden_states")
        if self.store.recording and context is not None:
            probs = flux_text_probabilities(attn, hidden_states, context, given.get("image_rotary_emb"), self.normalise)
            self.store.add(self.name, probs, attn.heads)  # may end the forward pass (StopForward)
        return self.original(attn, hidden_states, *args, **kwargs)


def capture_flux_attention(transformer, reads: Reads, normalise: str = "joint"):
    """Install :class:`FluxCaptureProcessor` on the double-stream attention ``reads.layers``; yield the store;
    always restore."""

    def make(store, name, original):
        return FluxCaptureProcessor(store, name, original, normalise)

    return capture_blocks(transformer, reads, make, "double-stream attention")
