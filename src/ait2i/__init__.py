"""ait2i: Aggregating-and-Isolating cross-attention guidance (AI-T2I) for diffusers text-to-image pipelines."""

from .config import AIT2IConfig, AttendExciteConfig, GuidanceConfig, NoGuidanceConfig, get_config

__version__ = "0.1.0"

__all__ = ["AIT2IConfig", "AttendExciteConfig", "GuidanceConfig", "NoGuidanceConfig", "get_config"]

from .engine import Diagnostics, GuidanceEngine  # noqa: E402
from .pipelines import generate  # noqa: E402
from .subjects import Subject, prompt_tokens, resolve_subjects  # noqa: E402

__all__ += ["Diagnostics", "GuidanceEngine", "Subject", "generate", "prompt_tokens", "resolve_subjects"]
