"""Purges: removing entries by path, by glob over paths, or by the origin's tags.

The one owner of purge decisions, for the control API (``POST
/cache/warming/purge``) and the proxy listener's ``PURGE`` method alike:

- what a selector reaches: a path is its primary key and every variant of
  it (RFC 9111 §4.1 secondary keys, as :meth:`Cache.invalidate` drops them);
  a glob is every primary key whose path matches; a tag is every entry the
  origin tagged with it (:class:`TagHeader`, indexed by the store);
- hard or soft: a hard purge deletes the entries (L1 copies too); a soft
  purge makes them stale now, so the next request is answered from the
  stale entry while one background refresh runs through the Filler (RFC
  5861 §3, the handler's stale-while-revalidate path), instead of every
  client waiting on the origin at once;
- re-warming: the purged paths go to the warmer's on-demand queue, the same
  path ``warm-key`` takes (DESIGN rule 1).

Everything a request names is checked before anything is purged; only a
store failure part-way can leave a purge half done (the caller says so).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

from proxy import policy
from proxy.cache import Cache
from proxy.cache_key import check_path_glob, glob_literal_prefix, path_glob_matcher
from proxy.entry import CacheEntry, VaryIndex
from proxy.forwarding import ForwardingRules
from proxy.metrics import ProxyMetrics
from warmer.service import BadRequest
from warmer.sources import is_origin_path

if TYPE_CHECKING:
    from warmer.executor import Run
    from warmer.service import Warmer

#: Tags kept per response; further ones are ignored (and counted).
MAX_TAGS = 32
#: Longest tag, in bytes (tags are ASCII); longer ones are ignored (and counted).
MAX_TAG_BYTES = 128
#: Longest path a purge names: the proxy's default bound on a request line.
MAX_PATH_CHARS = 8190
#: Paths one purge re-warms at most (a bulk ``warm-key`` takes as many).
MAX_REWARM = 10_000
# Keys read (and then deleted or rewritten) together: bounds what one purge
# holds in memory and lets the Redis store batch the reads.
_BATCH = 256

By = Literal["path", "pattern", "tag"]
# A tag: visible ASCII without the comma (commas and whitespace separate tags).
_TAG = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_TAG_SEPARATORS = re.compile(r"[\s,]+")
_ASCII_VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))


def parse_tags(values: Iterable[str]) -> tuple[tuple[str, ...], dict[str, int]]:
    """The tags named by the tag header's field lines (space or comma
    separated, duplicates once), and how many were ignored, by reason."""
    tags: dict[str, None] = {}
    ignored: dict[str, int] = {}
    for value in values:
        for tag in _TAG_SEPARATORS.split(value):
            if not tag or tag in tags:
                continue
            if not _TAG.fullmatch(tag):
                reason = "invalid"
            elif len(tag) > MAX_TAG_BYTES:
                reason = "too-long"
            elif len(tags) >= MAX_TAGS:
                reason = "too-many"
            else:
                tags[tag] = None
                continue
            ignored[reason] = ignored.get(reason, 0) + 1
    return tuple(tags), ignored


def check_tag(tag: str) -> str:
    """``tag`` if a response could carry it, else BadRequest naming ``tag``."""
    if not 0 < len(tag) <= MAX_TAG_BYTES:
        raise BadRequest("tag", f"must be 1 to {MAX_TAG_BYTES} characters")
    if not _TAG.fullmatch(tag):
        raise BadRequest("tag", "must be visible ASCII without spaces or commas")
    return tag


class TagHeader:
    """Takes the origin's tag header (``[cache.purge] tag_header``) out of a
    response when it is stored, keeping its tags with the entry.

    Decided at store time (DESIGN rule 3): the stored head never holds the
    header, so no hit strips it, and the relayed head of a miss is built
    from the same fields.  ``name`` "" keeps the header as any other.
    """

    def __init__(self, name: str, metrics: ProxyMetrics | None = None) -> None:
        self.name = name.lower()
        self._metrics = metrics

    def take(self, fields: policy.ResponseFields) -> tuple[policy.ResponseFields, tuple[str, ...]]:
        """``fields`` without the tag header, and the tags it named."""
        name = self.name
        if not name or name not in fields.index:
            return fields, ()
        tags, ignored = parse_tags(fields.values(name))
        if self._metrics is not None:
            for reason, count in ignored.items():
                self._metrics.tags_ignored.labels(reason).inc(count)
        kept = [f for f, n in zip(fields.headers, fields.names, strict=True) if n != name]
        return policy.response_fields(kept), tags


def check_pattern(pattern: str) -> str:
    """``pattern`` if it is a bounded glob over paths, else BadRequest naming ``pattern``.

    The bounds of ``warm-pattern``, and every ``[`` opens a class that
    closes and holds no ``[``, ``*`` or ``?``: fnmatch would take an
    unclosed ``[`` literally, and a purge that silently matches nothing
    because of a typo is worse than a refusal.
    """
    try:
        check_path_glob(pattern)
    except ValueError as exc:
        raise BadRequest("pattern", str(exc)) from None
    n = len(pattern)
    i = 0
    while (i := pattern.find("[", i)) >= 0:
        # As fnmatch reads a class: "[!" negates, a "]" first is a member.
        j = i + 1
        if j < n and pattern[j] == "!":
            j += 1
        if j < n and pattern[j] == "]":
            j += 1
        end = pattern.find("]", j)
        if end < 0:
            raise BadRequest("pattern", f"the [ at offset {i} is never closed by a ]")
        if any(c in "[*?" for c in pattern[j:end]):
            raise BadRequest("pattern", f"the [...] at offset {i} must not hold [, * or ?")
        i = end + 1
    return pattern


def staled(entry: CacheEntry, now: float, grace: float) -> CacheEntry | None:
    """``entry`` made stale at ``now`` by a soft purge; None if it already is.

    Its freshness ends now and its stale-while-revalidate window (RFC 5861
    §3) becomes at least ``grace`` long, so it is served while one refresh
    runs; an entry that must not be served stale (must-revalidate,
    no-cache: RFC 9111 §4.2.4) gets no window and is revalidated on its
    next use.  Its stale-if-error window keeps its length from now.
    """
    if entry.fresh_until <= now:
        return None
    swr = entry.stale_while_revalidate_until - entry.fresh_until
    sie = entry.stale_if_error_until - entry.fresh_until
    may_serve_stale = not (entry.must_revalidate or entry.no_cache)
    swr_until = now + (max(swr, grace) if may_serve_stale else 0.0)
    sie_until = now + sie
    return replace(
        entry,
        fresh_until=now,
        stale_while_revalidate_until=swr_until,
        stale_if_error_until=sie_until,
        expires_at=max(entry.expires_at, swr_until, sie_until),
        head=None,
    )


def _escape_glob(text: str) -> str:
    """``text`` as an fnmatch glob matching exactly itself."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def split_key(key: str) -> tuple[str, str] | None:
    """(host, path) of a primary or variant cache key (``//host/path`` or ``/path``)."""
    primary = key.partition("#v")[0]  # a request target never holds "#"
    if primary.startswith("//"):
        host, sep, rest = primary[2:].partition("/")
        return (host, "/" + rest) if sep else None
    return ("", primary) if primary.startswith("/") else None


@dataclass(slots=True)
class PurgeOutcome:
    """What a purge did."""

    purged: int = 0
    # (host, path) of each primary key something was purged under, in order.
    paths: dict[tuple[str, str], None] = field(default_factory=dict)
    # The re-warm run, when one was asked for and there was something to warm.
    rewarm: Run | None = None


class Purger:
    """Purges entries from the cache (store and L1) and re-warms them on request."""

    def __init__(
        self,
        cache: Cache,
        rules: ForwardingRules,
        metrics: ProxyMetrics,
        *,
        soft_stale_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cache = cache
        self._rules = rules
        self._metrics = metrics
        self._grace = soft_stale_seconds
        self._clock = clock
        #: The warmer purged paths are re-warmed through (set by the app).
        self.warmer: Warmer | None = None

    def use_rules(self, rules: ForwardingRules) -> None:
        """Find a path's keys by ``rules`` from now on (a reload)."""
        self._rules = rules

    async def purge(
        self,
        by: By,
        value: str,
        *,
        soft: bool = False,
        rewarm: bool = False,
        priority: str | None = None,
    ) -> PurgeOutcome:
        """Purge what ``value`` selects (a path, a glob over paths, a tag).

        Refuses (BadRequest naming the field) before touching anything; a
        StoreError part-way leaves what was done so far done.
        """
        if by == "path":
            path = self._check_path(value)
        elif by == "pattern":
            check_pattern(value)
        else:
            check_tag(value)
        if rewarm or priority is not None:
            # Checked even without rewarm: a request the API would refuse
            # one way is refused every way.
            priority = self._check_rewarm(priority)
        if by == "path":
            outcome = await self._purge_primary(await self._keys_of_path(path), soft, by)
        elif by == "pattern":
            # A purge reaching many keys tells the other replicas' L1 its
            # glob or tag, not every key (proxy.fleet).
            with self._cache.purging(pattern=value):
                outcome = await self._purge_primary(self._keys_of_pattern(value), soft, by)
        else:
            with self._cache.purging(tag=value):
                outcome = await self._purge_tag(value, soft)
        if rewarm and priority is not None:
            outcome.rewarm = self._rewarm(outcome.paths, priority)
        return outcome

    async def purge_key(self, key: str, *, soft: bool = False) -> PurgeOutcome:
        """Purge one primary cache key and its variants (the PURGE method)."""
        return await self._purge_primary([key], soft, "path")

    # ------------------------------------------------------------ selection

    def _check_path(self, path: str) -> str:
        if len(path) > MAX_PATH_CHARS:
            raise BadRequest("path", f"must be at most {MAX_PATH_CHARS} characters")
        if not is_origin_path(path):
            raise BadRequest(
                "path", "must be a path such as /products/42, without spaces or control characters"
            )
        # Non-ASCII percent-encoded as UTF-8, as a browser sends it (and as
        # warm-key does): the key of a browser's request for it.
        return path if path.isascii() else quote(path, safe=_ASCII_VISIBLE)

    async def _keys_of_path(self, path: str) -> list[str]:
        """The primary keys of ``path``: one with keys as paths, one per host otherwise."""
        rules = self._rules
        if rules.keys_are_paths:
            return [rules.cache_key(path, "")]
        # The path as keys hold it (the [cache] query rules applied), under any host.
        wanted = split_key(rules.cache_key(path, rules.default_host))
        assert wanted is not None
        return [
            key
            async for key in self._cache.keys(f"//*{_escape_glob(wanted[1])}")
            if (parsed := split_key(key)) is not None and parsed[1] == wanted[1]
        ]

    async def _keys_of_pattern(self, pattern: str) -> AsyncIterator[str]:
        """Primary keys whose path matches ``pattern``; the store is asked only
        for the glob's literal prefix, as ``warm-pattern`` asks it."""
        match = path_glob_matcher(pattern)
        prefix = glob_literal_prefix(pattern)
        glob = f"{_escape_glob(prefix)}*"
        if not self._rules.keys_are_paths:
            glob = f"//*{glob}"
        scanned = 0
        async for key in self._cache.keys(glob):
            parsed = split_key(key)
            if parsed is not None and match(parsed[1]):
                yield key
            scanned += 1
            if scanned % _BATCH == 0:
                await asyncio.sleep(0)  # a long scan gives way to clients

    # ------------------------------------------------------------- applying

    async def _purge_primary(
        self, keys: Iterable[str] | AsyncIterable[str], soft: bool, by: By
    ) -> PurgeOutcome:
        """Purge primary ``keys`` and every variant of each, a batch at a time
        as the keys come (a scan is never held whole)."""
        outcome = PurgeOutcome()
        async for batch in _batches(keys):
            items = await asyncio.gather(*(self._cache.read(k) for k in batch))
            removed: list[str] = []  # index records and variant keys, dropped with the entries
            candidates: list[str] = []
            for key, item in zip(batch, items, strict=True):
                if isinstance(item, VaryIndex):
                    removed.append(key)
                    candidates.extend(item.variant_keys)
                elif isinstance(item, CacheEntry):
                    candidates.append(key)
            variants = await asyncio.gather(*(self._cache.read(k) for k in candidates))
            entries = [
                (k, v)
                for k, v in zip(candidates, variants, strict=True)
                if isinstance(v, CacheEntry)
            ]
            if soft:
                await self._stale(entries)
            else:
                await self._cache.remove([*removed, *candidates])
            self._count(outcome, entries, soft, by)
        return outcome

    async def _purge_tag(self, tag: str, soft: bool) -> PurgeOutcome:
        """Purge every entry carrying ``tag``; keys the index named but whose
        entry is gone or untagged since are taken out of the index."""
        outcome = PurgeOutcome()
        store = self._cache.store
        async for batch in _batches(store.tagged(tag)):
            items = await asyncio.gather(*(self._cache.read(k) for k in batch))
            entries = [
                (k, item)
                for k, item in zip(batch, items, strict=True)
                if isinstance(item, CacheEntry) and tag in item.tags
            ]
            if soft:
                await self._stale(entries)
                untagged = {k for k, _ in entries}
                gone = [k for k in batch if k not in untagged]
            else:
                await self._cache.remove([k for k, _ in entries])
                gone = batch
            if gone:
                await store.untag(tag, gone)
            self._count(outcome, entries, soft, "tag")
        return outcome

    async def _stale(self, entries: list[tuple[str, CacheEntry]]) -> None:
        now = self._clock()
        for key, entry in entries:
            stale = staled(entry, now, self._grace)
            if stale is not None:
                await self._cache.rewrite(key, stale)

    def _count(
        self, outcome: PurgeOutcome, entries: list[tuple[str, CacheEntry]], soft: bool, by: By
    ) -> None:
        outcome.purged += len(entries)
        for key, _ in entries:
            parsed = split_key(key)
            # Only as many as a re-warm takes are kept.
            if parsed is not None and len(outcome.paths) < MAX_REWARM:
                outcome.paths.setdefault(parsed, None)
        if entries:
            self._metrics.purged.labels("soft" if soft else "hard", by).inc(len(entries))

    # ------------------------------------------------------------- re-warm

    def _check_rewarm(self, priority: str | None) -> str:
        warmer = self.warmer
        if warmer is None:
            raise BadRequest("rewarm", "this proxy has no warmer")
        priority = priority or warmer.default_priority
        if priority not in warmer.config.levels:
            raise BadRequest("priority", f"must be one of {list(warmer.config.levels)}")
        return priority

    def _rewarm(self, paths: Iterable[tuple[str, str]], priority: str) -> Run | None:
        """Warm the purged paths again through the on-demand queue.

        Paths the warmer's include/exclude filter refuses are left cold (a
        purge is not a way around it); with keys per host the default host's
        entry is warmed, as ``warm-key`` warms it.
        """
        warmer = self.warmer
        assert warmer is not None
        targets: dict[str, None] = {}
        for _, path in paths:
            if is_origin_path(path) and warmer.filter.allows(path):
                targets.setdefault(path, None)
                if len(targets) >= MAX_REWARM:
                    break
        if not targets:
            return None
        return warmer.warm_urls(list(targets), priority, "purge")


async def _batches(keys: Iterable[str] | AsyncIterable[str]) -> AsyncIterator[list[str]]:
    """``keys`` in lists of at most ``_BATCH``."""
    batch: list[str] = []
    if isinstance(keys, AsyncIterable):
        async for key in keys:
            batch.append(key)
            if len(batch) >= _BATCH:
                yield batch
                batch = []
    else:
        for key in keys:
            batch.append(key)
            if len(batch) >= _BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


class PurgeMethod:
    """The proxy listener's ``PURGE /path`` (``[cache.purge] method``): who may."""

    def __init__(self, purger: Purger, allowed_networks: Iterable[str]) -> None:
        self.purger = purger
        self._networks = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]

    def allows(self, peer: str | None) -> bool:
        """Whether the connection's peer address is in an allowed network."""
        if peer is None:
            return False
        try:
            address = ipaddress.ip_address(peer.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)
