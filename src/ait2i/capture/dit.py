"""Capture of a DiT's cross-attention (PixArt's ``attn2``): every block attends from the image tokens of one token
grid to the text tokens, so the maps are recorded on that grid and average-pooled to the side a host reads.

The processor is the UNet's cross-attention processor (:class:`~ait2i.capture.unet.CaptureProcessor`): the same
``Attention`` layer, the same arithmetic (the additive padding mask included).
"""

from __future__ import annotations

from .store import Reads, capture_blocks
from .unet import CaptureProcessor


def capture_cross_attention(transformer, reads: Reads):
    """Install :class:`~ait2i.capture.unet.CaptureProcessor` on the cross-attention ``reads.layers``; yield the store
    (maps pooled from ``reads.grid`` to ``reads.res``); always restore the processors."""
    return capture_blocks(transformer, reads, CaptureProcessor, "cross-attention")
