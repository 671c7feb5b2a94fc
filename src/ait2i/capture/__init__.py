"""Attention capture by attention processors, one module per attention kind (docs/method.md, section 1).

- :mod:`~ait2i.capture.store`: the store the processors record into, the processor base class, installation and
  restoring of processors, token grids and the default read blocks of transformers;
- :mod:`~ait2i.capture.unet`: a UNet's cross-attention layers (``attn2``) at one resolution in chosen UNet parts;
- :mod:`~ait2i.capture.joint`: MM-DiT joint attention (SD3; Flux's double-stream blocks);
- :mod:`~ait2i.capture.dit`: a DiT's cross-attention (PixArt's ``attn2``) on its token grid.

Which layers a host reads is the host's choice (:meth:`ait2i.hosts.Host.reads`); this package knows no host.
"""

from .store import AttentionStore, GridAttentionStore, Reads, StopForward, WrappingProcessor, install_capture
from .unet import CaptureProcessor, capture_attention, cross_attention_resolutions, select_layers

__all__ = [
    "AttentionStore",
    "CaptureProcessor",
    "GridAttentionStore",
    "Reads",
    "StopForward",
    "WrappingProcessor",
    "capture_attention",
    "cross_attention_resolutions",
    "install_capture",
    "select_layers",
]
