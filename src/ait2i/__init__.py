"""ait2i: Aggregating-and-Isolating cross-attention guidance (AI-T2I) for diffusers text-to-image pipelines."""

from .config import AIT2IConfig, AttendExciteConfig, GuidanceConfig, NoGuidanceConfig, get_config

__version__ = "0.1.0"

__all__ = ["AIT2IConfig", "AttendExciteConfig", "GuidanceConfig", "NoGuidanceConfig", "get_config"]
