"""laned — the lane controller of a highway-toll ETC lane."""

__version__ = "0.1.0"
