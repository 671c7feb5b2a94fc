"""Attend-and-Excite's loss (Chefer et al., 2023) on the subjects' maximum attention
(:func:`ait2i.losses.maps.subject_max_attention`)."""

from __future__ import annotations

import torch

__all__ = ["attend_excite_loss"]


def attend_excite_loss(max_att: torch.Tensor) -> torch.Tensor:
    """Attend-and-Excite (Chefer et al., 2023, Eq. 1): ``max_g max(0, 1 - max_att_g)``, the most neglected subject.

    Args:
        max_att (`torch.Tensor` of shape `(B, G)`): from :func:`max_attention`.

    Returns:
        `torch.Tensor` of shape `(B,)`.
    """
    return (1.0 - max_att.float()).clamp_min(0.0).amax(dim=-1)
