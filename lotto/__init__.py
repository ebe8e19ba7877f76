"""lotto: an experiment runner for efficient-network research."""

__version__ = "0.1.0"
