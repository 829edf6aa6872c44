"""hierpipe: experiment pipeline for hierarchical metric learning (ProxyDR, HIER)."""

__version__ = "0.1.0"
