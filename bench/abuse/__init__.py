"""Abuse and fault probes: scripts that run the real proxy against hostile local parts.

Each probe module has an ``async def run(...) -> Report`` that the fast tests
import, and a ``main()`` that prints its figures and exits non-zero on failure.
See ``bench/abuse/README.md``.
"""
