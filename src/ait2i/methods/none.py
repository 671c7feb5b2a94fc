"""Vanilla sampling, the method ``"none"``: the host pipeline runs untouched (maps may still be recorded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..losses import check_subjects, subject_max_attention
from .base import GuidanceConfig
from .space import declare_space


@dataclass
class NoGuidanceConfig(GuidanceConfig):
    """Vanilla sampling: the host pipeline runs untouched (maps may still be recorded for pictures)."""

    max_guided_steps: int | float = 0
    name: str = field(default="none", repr=False)
    guides: ClassVar[bool] = False

    def guided_steps(self, num_steps: int) -> int:
        return 0

    def refinement_thresholds(self, num_steps: int) -> dict[int, float]:
        return {}

    def loss(self, raw, subjects, eot_index):
        """No loss (zeros); the subjects' maximum attention, for the diagnostics."""
        raw = check_subjects(raw, subjects, self.softmax_span, eot_index)
        max_att = subject_max_attention(
            raw, subjects, eot_index, self.softmax_span, self.smooth_kernel, self.smooth_sigma
        )
        return raw.new_zeros(raw.shape[0]), {}, max_att


declare_space(NoGuidanceConfig, {})  # vanilla: nothing to tune
