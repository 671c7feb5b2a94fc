"""The version of ait2i (a leaf: any module may read it without importing the package's public API)."""

__version__ = "0.2.0"
