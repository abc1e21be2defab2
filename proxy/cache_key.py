"""Cache-key rules over the query string: parameters left out, parameters sorted.

What nginx's ``proxy_cache_key`` and Varnish's ``vcl_hash`` let an operator
say: tracking parameters (``utm_*``, ``fbclid``) do not select a different
response, and ``?a=1&b=2`` is ``?b=2&a=1``.  The rules only ever shape the
cache key; the request forwarded to the origin keeps its full URL.

Pure and small: :class:`KeyRules` is built once from ``[cache]`` and its
:meth:`KeyRules.normalize` is what ``ForwardingRules`` (the one owner of
cache keys) applies to every key it makes, so client requests, warm fetches,
invalidations and the replay of a trace all key alike.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote

# Bounds on what an operator may configure: each glob becomes part of one
# compiled regular expression matched against every parameter name.
MAX_GLOBS = 64
MAX_GLOB_CHARS = 128


class CacheKeySettings(Protocol):
    """The ``[cache]`` settings the rules are built from."""

    @property
    def ignore_query_params(self) -> list[str]: ...

    @property
    def sort_query_params(self) -> bool: ...


def check_globs(globs: Iterable[str]) -> list[str]:
    """``globs`` if they are within bounds, else ValueError saying which bound."""
    checked = list(globs)
    if len(checked) > MAX_GLOBS:
        raise ValueError(f"at most {MAX_GLOBS} globs, got {len(checked)}")
    for glob in checked:
        if not isinstance(glob, str) or not glob:
            raise ValueError(f"a glob must be a non-empty string, got {glob!r}")
        if len(glob) > MAX_GLOB_CHARS:
            raise ValueError(f"a glob is at most {MAX_GLOB_CHARS} characters, got {glob[:40]!r}…")
    return checked


#: Bounds on a glob over paths given through the control API (``warm-pattern``).
#: A glob of 100,000 ``*a`` took seconds and megabytes to compile; within
#: these bounds it compiles in microseconds to a few kilobytes.
MAX_PATH_GLOB_CHARS = 512
MAX_PATH_GLOB_WILDCARDS = 16
_WILDCARDS = frozenset("*?[")


def check_path_glob(pattern: str) -> str:
    """``pattern`` if it is a bounded glob over paths, else ValueError saying why.

    A glob over paths starts with "/" or "*", is at most
    :data:`MAX_PATH_GLOB_CHARS` long and holds at most
    :data:`MAX_PATH_GLOB_WILDCARDS` wildcards (each ``*``, ``?`` and ``[``
    counts), and no whitespace or control character (no path has one).
    """
    if not pattern.startswith(("/", "*")):
        raise ValueError("must be a glob over paths, starting with / or *")
    if len(pattern) > MAX_PATH_GLOB_CHARS:
        raise ValueError(f"must be at most {MAX_PATH_GLOB_CHARS} characters, got {len(pattern)}")
    wildcards = sum(1 for c in pattern if c in _WILDCARDS)
    if wildcards > MAX_PATH_GLOB_WILDCARDS:
        raise ValueError(
            f"must hold at most {MAX_PATH_GLOB_WILDCARDS} wildcards (*, ?, [), got {wildcards}"
        )
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in pattern):
        raise ValueError("must not hold whitespace or control characters")
    return pattern


def path_glob_matcher(pattern: str) -> Callable[[str], bool]:
    """A test of whether a path matches ``pattern`` (fnmatch syntax, case-sensitive).

    Call :func:`check_path_glob` first.  Not :func:`fnmatch.fnmatchcase`: it
    keeps up to 32,768 compiled patterns, each user's glob among them.  The
    expression :func:`fnmatch.translate` makes puts each ``*`` in an atomic
    group, so a match never backtracks into an earlier ``*``: its cost is
    at most the path's length times the glob's, and the bounds above keep
    the glob short.
    """
    # re keeps at most 512 compiled expressions (a few kilobytes each here).
    match = re.compile(fnmatch.translate(pattern)).match
    return lambda path: match(path) is not None


def glob_literal_prefix(pattern: str) -> str:
    """The part of ``pattern`` before its first wildcard: what every match starts with."""
    for i, c in enumerate(pattern):
        if c in _WILDCARDS:
            return pattern[:i]
    return pattern


def _identity(path_qs: str) -> str:
    return path_qs


@dataclass(frozen=True, slots=True)
class KeyRules:
    """Which query parameters a cache key leaves out, and whether it sorts them.

    ``ignore``: globs over parameter names (``fnmatchcase``: case matters,
    ``*``, ``?``, ``[...]``), compared with the name after percent-decoding.
    ``sort``: parameters ordered by (decoded) name; parameters of one name
    keep their order, since ``?a=1&a=2`` and ``?a=2&a=1`` may mean different
    things to the origin.  Values and their encoding are kept byte for byte.
    """

    ignore: tuple[str, ...] = ()
    sort: bool = False
    _ignored: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _active: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_globs(self.ignore)
        # One expression for all globs, compiled once.  fnmatch's translation
        # matches a run of stars without backtracking blow-ups, and the bounds
        # above keep the expression small.
        pattern = (
            re.compile("|".join(fnmatch.translate(g) for g in self.ignore)) if self.ignore else None
        )
        object.__setattr__(self, "_ignored", pattern)
        object.__setattr__(self, "_active", pattern is not None or self.sort)

    @classmethod
    def from_settings(cls, cache: CacheKeySettings) -> KeyRules:
        """The rules ``[cache]`` configures (``ignore_query_params``, ``sort_query_params``)."""
        return cls(ignore=tuple(cache.ignore_query_params), sort=cache.sort_query_params)

    @property
    def active(self) -> bool:
        """Some rule is configured: keys may differ from the request target."""
        return self._active

    def describe(self) -> str:
        """The rules in words, e.g. for ``warm --standalone``'s report ("" if none)."""
        parts = []
        if self.ignore:
            parts.append("query parameters " + ", ".join(self.ignore) + " left out")
        if self.sort:
            parts.append("query parameters sorted by name")
        return "; ".join(parts)

    @property
    def normalizer(self) -> Callable[[str], str]:
        """The function to apply to each key: :meth:`normalize`, or the identity
        when no rule is configured (so the hit path pays nothing for them)."""
        return self.normalize if self.active else _identity

    def normalize(self, path_qs: str) -> str:
        """``path_qs`` as a cache key: ignored parameters left out, the rest sorted.

        Only the query (after the first ``?``) is touched, so a key with a
        host in front (``//host/path?q``) or a trace key normalizes alike.
        A target without a query, or one the rules leave as it is, comes
        back as the very same string.  Empty segments (``a=1&&b=2``) are no
        parameters and go; a query left without parameters drops its ``?``.
        """
        path, sep, query = path_qs.partition("?")
        if not sep or not self._active:
            return path_qs
        params = query.split("&")
        ignored = self._ignored
        if ignored is not None:
            kept = [p for p in params if p and not ignored.match(_name(p))]
        else:
            kept = [p for p in params if p]
        if not kept:
            return path
        if self.sort:
            kept = sorted(kept, key=_name)  # sorted() is stable: same names keep their order
        if kept == params:
            return path_qs
        return f"{path}?{'&'.join(kept)}"


def _name(param: str) -> str:
    """A parameter's name, percent-decoded (``utm%5Fsource`` is ``utm_source``)."""
    name = param.partition("=")[0]
    return unquote(name) if "%" in name else name


NO_RULES = KeyRules()
