"""Credentials masked wherever settings or sources are shown.

:func:`mask_url` replaces a URL's userinfo password and the values of
password-like query parameters (``password``, ``pass``, ``pwd``, ``token``,
``secret``, ``key``, ``sslpassword``) with a mask; it lives with the sources
(:mod:`warmer.sources`), which mask DSNs, since the warmer never imports the
proxy.  :func:`redacted` applies it to every URL of a settings document: the
real values are kept only where they are used.
"""

from __future__ import annotations

from typing import Any

from warmer.sources import MASK, SECRET_PARAMS, mask_url

__all__ = ["MASK", "SECRET_PARAMS", "mask_url", "redacted"]


def redacted(value: Any, mask: str = MASK) -> Any:
    """``value`` (plain data: dicts, lists, strings) with every URL's
    credentials masked; anything that is not a URL is left as it is."""
    if isinstance(value, dict):
        return {k: redacted(v, mask) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v, mask) for v in value]
    if isinstance(value, str) and "://" in value:
        return mask_url(value, mask)
    return value
