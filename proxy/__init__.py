"""warmproxy: a caching reverse proxy that keeps its cache warm."""

__version__ = "0.1.0"
