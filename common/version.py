"""The product version, named by every result (algorithm identity, SEG/SR software versions)."""

__version__ = "0.1.0"
