"""ait2i: Aggregating-and-Isolating cross-attention guidance (AI-T2I) for diffusers text-to-image pipelines."""

from .config import AIT2IConfig, AttendExciteConfig, GuidanceConfig, NoGuidanceConfig

__version__ = "0.1.0"

from .engine import Diagnostics, GuidanceEngine  # noqa: E402
from .guided import generate, guided_output_class  # noqa: E402
from .hosts import Host, host_for, register_host, supported_pipelines  # noqa: E402
from .methods import available_methods, get_config, get_method, register_method  # noqa: E402
from .subjects import Subject, prompt_tokens, resolve_subjects  # noqa: E402
from .tune import tune  # noqa: E402  (the function; the module's names: `from ait2i.tune import ...`)

__all__ = [
    "AIT2IConfig",
    "AttendExciteConfig",
    "Diagnostics",
    "GuidanceConfig",
    "GuidanceEngine",
    "Host",
    "NoGuidanceConfig",
    "Subject",
    "available_methods",
    "generate",
    "get_config",
    "get_method",
    "guided_output_class",
    "host_for",
    "prompt_tokens",
    "register_host",
    "register_method",
    "resolve_subjects",
    "supported_pipelines",
    "tune",
]
