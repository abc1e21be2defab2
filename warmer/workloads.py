"""Generated request traces: the kinds of traffic a caching proxy sees, seeded.

The two public traces (a sports web site, campus video requests) are two shapes
of traffic among many.  A warming strategy whose constants fit them may fail on
the others, so the replay benches also run on these generated kinds, each a
plain model of how such traffic arises (users, sessions, clocks), not shaped
to suit any strategy:

- ``polling``: API clients re-asking for one resource each every 30-300 s;
- ``browsing``: sessions paging through a category with product pages between;
- ``cdn``: a Zipf catalogue plus new objects every hour that are hot for a while;
- ``sequences``: video chunks played in order, multi-step flows, playlists;
- ``paginated``: API clients walking ``?page=N`` in order at their page size;
- ``tiles``: map viewports panning and zooming over tiles around hotspots;
- ``dashboards``: each user's widget endpoints, loaded and polled in working hours;
- ``long-tail``: a drifting Zipf catalogue of 250,000 keys plus new items;
- ``shop``: a week of a web shop, diurnal and weekly rates, sessions, promotions;
- ``block-storage``: sequential runs of blocks, re-reads, a few hot regions.

Every generator takes ``scale`` (the number of requests it returns, exactly),
``seed`` and ``duration`` (seconds: the trace covers that much time from its
start; a session still running at the end is cut there, as a log ends), and
returns :data:`~warmer.trace.TraceRow` rows sorted by time, timestamps rounded
to the millisecond (as :func:`write_csv` writes them, so a trace replayed from
memory and from its file give the same figures).  Sizes are a fixed function
of the key.  Generation is deterministic: the same arguments give the same
rows, in any process.

``polling``, ``browsing`` and ``cdn`` start at :data:`T0`; at their default
scale with seed 1, ``polling`` and ``cdn`` give exactly the traffic
``bench/replay_kinds.py`` generated before these kinds moved here (``browsing``
too but for its sessions now cut at the end of the day).  The other kinds
start on a Monday at midnight UTC (:data:`MONDAY`): they have days and weeks.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
import random
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from warmer.trace import HEADER, TraceRow

HOUR: Final = 3600.0
DAY: Final = 86_400.0
#: Where ``polling``, ``browsing`` and ``cdn`` start.
T0: Final = 1_700_000_000.0
#: Monday 13 November 2023, 00:00 UTC: where the kinds with days and weeks start.
MONDAY: Final = 1_699_833_600.0

#: A generated request before it is finished into a row: (ts, key, client).
_Raw = list[tuple[float, str, str]]

#: Relative request rate of consumer traffic by local hour (0-23): low before
#: dawn, rising through the morning, highest in the evening.
_CONSUMER_HOURS: Final = (
    0.35, 0.25, 0.18, 0.14, 0.12, 0.14, 0.22, 0.40, 0.60, 0.75, 0.85, 0.90,
    0.95, 0.92, 0.90, 0.90, 0.92, 0.97, 1.00, 1.00, 0.98, 0.90, 0.72, 0.52,
)  # fmt: skip
#: Relative rate of a web shop by weekday (Monday first): Sunday evenings shop.
_SHOP_WEEKDAYS: Final = (1.0, 0.97, 0.97, 1.0, 0.9, 0.82, 1.15)


def _check(scale: int, duration: float) -> None:
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive number of requests, got {scale!r}")
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"duration must be positive seconds, got {duration!r}")


def _fill(raw: _Raw, scale: int, actor: Callable[[], None], kind: str, end: float) -> None:
    """Call ``actor`` (one user, session or client, appending its requests to
    ``raw``) until ``scale`` requests fall before ``end``."""
    idle = counted = 0
    while counted < scale:
        before = len(raw)
        actor()
        added = sum(1 for i in range(before, len(raw)) if raw[i][0] < end)
        counted += added
        idle = 0 if added else idle + 1
        if idle > 10_000:
            raise ValueError(f"{kind}: the duration holds no requests (too short?)")


def _finish(raw: _Raw, scale: int, sizes: tuple[int, int], end: float = math.inf) -> list[TraceRow]:
    """The first ``scale`` requests generated before ``end`` (a session that
    runs past it is cut there, as a log ends), sorted by time (stable), as rows."""
    if end < math.inf:
        raw = [r for r in raw if r[0] < end]
    del raw[scale:]
    raw.sort(key=operator.itemgetter(0))
    low, span = sizes[0], max(1, sizes[1] - sizes[0])
    crc = zlib.crc32
    return [(round(t, 3), key, low + crc(key.encode()) % span, client) for t, key, client in raw]


def _consumer_rate(start: float, offset_hours: float = 0.0) -> Callable[[float], float]:
    """Consumer traffic's rate at ``t`` (seconds since ``start``, a midnight),
    interpolated between hours; ``offset_hours``: local time ahead of UTC."""

    def rate(t: float) -> float:
        hours = ((t + start) / HOUR + offset_hours) % 24
        h = int(hours)
        frac = hours - h
        return _CONSUMER_HOURS[h] * (1 - frac) + _CONSUMER_HOURS[(h + 1) % 24] * frac

    return rate


class _Arrivals:
    """Draws instants in ``[start, start + duration)`` with a density that
    follows ``rate`` (of the seconds since ``start``), on a grid of ``step`` s."""

    def __init__(
        self, start: float, duration: float, rate: Callable[[float], float], step: float = 60.0
    ) -> None:
        self.start = start
        self.end = start + duration
        self.step = step
        bins = max(1, math.ceil(duration / step))
        self.cum = list(itertools.accumulate(rate((i + 0.5) * step) for i in range(bins)))
        if not self.cum[-1] > 0:
            raise ValueError("the arrival rate is zero over the whole duration")

    def draw(self, rng: random.Random) -> float:
        i = bisect.bisect_right(self.cum, rng.random() * self.cum[-1])
        return min(self.start + (i + rng.random()) * self.step, math.nextafter(self.end, 0))


class _Zipf:
    """Ranks ``0..n-1`` drawn with probability proportional to ``(rank + 1) ** -s``."""

    def __init__(self, n: int, s: float) -> None:
        self.n = n
        self.weights = [(r + 1) ** -s for r in range(n)]
        self.cum = list(itertools.accumulate(self.weights))

    def draw(self, rng: random.Random) -> int:
        return min(bisect.bisect_right(self.cum, rng.random() * self.cum[-1]), self.n - 1)

    def many(self, rng: random.Random, k: int) -> list[int]:
        return rng.choices(range(self.n), cum_weights=self.cum, k=k)


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


# ---------------------------------------------------------------- the kinds


def polling(scale: int = 307_514, *, seed: int = 0, duration: float = 12 * HOUR) -> list[TraceRow]:
    """API clients re-asking for one resource each (a status page, a job's
    state) every 30, 60, 120 or 300 s for five minutes to four hours;
    resources Pareto-popular among 3,000."""
    _check(scale, duration)
    rng = random.Random(seed)
    raw: _Raw = []
    clients = itertools.count()

    def client() -> None:
        c = next(clients)
        resource = f"/api/items/{int(rng.paretovariate(0.8)) % 3000}"
        period = rng.choice([30.0, 60.0, 120.0, 300.0])
        t = T0 + rng.uniform(0, duration)
        end = min(t + rng.uniform(300, 4 * HOUR), T0 + duration)
        while t < end:
            raw.append((t, resource, f"c{c}"))
            t += period + rng.uniform(-2, 2)

    _fill(raw, scale, client, "polling", T0 + duration)
    return _finish(raw, scale, (200, 4_000), T0 + duration)


def browsing(scale: int = 266_862, *, seed: int = 0, duration: float = DAY) -> list[TraceRow]:
    """Shoppers paging through one of 50 categories (``/cat/C?page=1``, 2, ...,
    going on with probability 0.7) with up to two product pages (of 20,000)
    after each listing page."""
    _check(scale, duration)
    rng = random.Random(seed)
    raw: _Raw = []
    sessions = itertools.count()

    def session() -> None:
        s = next(sessions)
        t = T0 + rng.uniform(0, duration)
        category = int(rng.paretovariate(1.0)) % 50
        page = 1
        while True:
            raw.append((t, f"/cat/{category}?page={page}", f"u{s}"))
            for _ in range(rng.randrange(3)):
                t += rng.uniform(2, 20)
                raw.append((t, f"/product/{int(rng.paretovariate(0.8)) % 20_000}", f"u{s}"))
            if rng.random() > 0.7:
                break
            page += 1
            t += rng.uniform(3, 30)

    _fill(raw, scale, session, "browsing", T0 + duration)
    return _finish(raw, scale, (2_000, 60_000), T0 + duration)


def cdn(scale: int = 115_180, *, seed: int = 0, duration: float = 2 * DAY) -> list[TraceRow]:
    """A CDN edge: 70 % of requests for a Pareto-popular catalogue of 50,000
    static objects, 30 % for 200 objects new each hour (hot while new), at a
    day-shaped rate from 3,000 clients."""
    _check(scale, duration)
    rng = random.Random(seed)
    hours = max(1, math.ceil(duration / HOUR))
    # The hourly counts of the original bench (2,000 requests an hour on
    # average), scaled to ``scale``: the rows repeat at its scale.
    base = [
        int(
            2000 * min(1.0, duration / HOUR - h) * (1.2 + math.sin((h % 24 - 6) / 24 * 2 * math.pi))
        )
        for h in range(hours)
    ]
    total = sum(base)
    counts = [int(b * scale / total) for b in base]
    for i in range(scale - sum(counts)):
        counts[i % hours] += 1
    raw: _Raw = []
    for hour, count in enumerate(counts):
        new = [f"/obj/{hour}/{i}" for i in range(200)]
        span = min(HOUR, duration - hour * HOUR)
        for _ in range(count):
            t = T0 + hour * HOUR + rng.uniform(0, span)
            if rng.random() < 0.3:
                key = new[int(rng.paretovariate(1.0)) % 200]
            else:
                key = f"/static/{int(rng.paretovariate(0.9)) % 50_000}"
            raw.append((t, key, f"c{rng.randrange(3000)}"))
    return _finish(raw, scale, (1_000, 2_000_000))


def sequences(scale: int = 150_000, *, seed: int = 0, duration: float = DAY) -> list[TraceRow]:
    """Traffic with a strong what-comes-next: 60 % of sessions play a video
    (``/v/ID/manifest.m3u8`` then ``/v/ID/seg/N`` in order, one segment per
    segment duration, abandoning or seeking forward now and then), 25 % walk a
    multi-step flow (sign-up, checkout ...: ``/flow/NAME/step/K``, dropping off
    at each step, sometimes stepping back), 15 % play a playlist's tracks in
    order (``/playlist/P/track/N``; some shuffle, some skip)."""
    _check(scale, duration)
    rng = random.Random(seed)
    arrivals = _Arrivals(MONDAY, duration, _consumer_rate(MONDAY))
    videos = 3_000
    video_pick = _Zipf(videos, 0.9)
    video_segments = [rng.randint(20, 300) for _ in range(videos)]
    segment_seconds = [rng.choice((4.0, 6.0, 10.0)) for _ in range(videos)]
    flows = (
        ("signup", 4, 0.75),
        ("checkout", 5, 0.8),
        ("onboarding", 7, 0.85),
        ("booking", 6, 0.7),
        ("kyc", 3, 0.6),
        ("support", 4, 0.65),
    )
    flow_pick = _Zipf(len(flows), 1.0)
    playlists = 800
    playlist_pick = _Zipf(playlists, 1.0)
    playlist_tracks = [rng.randint(10, 60) for _ in range(playlists)]
    users = max(200, scale // 25)
    raw: _Raw = []
    append = raw.append

    def video(t: float, user: str) -> None:
        v = video_pick.draw(rng)
        n, seconds = video_segments[v], segment_seconds[v]
        append((t, f"/v/{v}/manifest.m3u8", user))
        segment = 0 if rng.random() < 0.9 else rng.randrange(n)
        played = 0
        while segment < n:
            # The player fills its buffer (three segments) at once, then
            # fetches one segment per segment played.
            t += rng.uniform(0.1, 0.4) if played < 3 else seconds * rng.uniform(0.9, 1.1)
            append((t, f"/v/{v}/seg/{segment}", user))
            played += 1
            if rng.random() < 0.03:
                return
            segment += rng.randint(5, 50) if rng.random() < 0.02 else 1

    def flow(t: float, user: str) -> None:
        name, steps, carry_on = flows[flow_pick.draw(rng)]
        step = 1
        while step <= steps:
            append((t, f"/flow/{name}/step/{step}", user))
            t += rng.uniform(5, 60)
            if step > 1 and rng.random() < 0.05:
                step -= 1  # back, to correct something
            elif rng.random() < carry_on:
                step += 1
            else:
                return

    def playlist(t: float, user: str) -> None:
        p = playlist_pick.draw(rng)
        order = list(range(playlist_tracks[p]))
        if rng.random() < 0.1:
            rng.shuffle(order)
        elif rng.random() < 0.2:
            order = order[rng.randrange(len(order)) :]
        for track in order:
            append((t, f"/playlist/{p}/track/{track}", user))
            t += rng.uniform(5, 30) if rng.random() < 0.2 else rng.uniform(150, 300)
            if rng.random() < 0.05:
                return

    def session() -> None:
        t = arrivals.draw(rng)
        user = f"u{rng.randrange(users)}"
        kind = rng.random()
        if kind < 0.6:
            video(t, user)
        elif kind < 0.85:
            flow(t, user)
        else:
            playlist(t, user)

    _fill(raw, scale, session, "sequences", MONDAY + duration)
    return _finish(raw, scale, (1_000, 1_500_000), MONDAY + duration)


_RESOURCES: Final = (
    "items", "orders", "customers", "products", "invoices", "tickets",
    "events", "users", "projects", "comments", "files", "messages",
)  # fmt: skip


def paginated(scale: int = 150_000, *, seed: int = 0, duration: float = DAY) -> list[TraceRow]:
    """A paginated JSON API (``/api/t/T/RESOURCE?page=N``) of 200 tenants:
    web clients scroll from page 1 at the server's page size (20) and go on
    with probability 0.6, mobile clients at ``per_page=50``, and sync jobs
    walk every page at ``per_page=100`` every 10-60 min for a few hours."""
    _check(scale, duration)
    rng = random.Random(seed)
    arrivals = _Arrivals(MONDAY, duration, _consumer_rate(MONDAY))
    tenants = 200
    tenant_pick = _Zipf(tenants, 1.0)
    resource_pick = _Zipf(len(_RESOURCES), 0.8)
    # Items per (tenant, resource): log-uniform, 30 to 30,000.
    items = {
        (t, r): int(_log_uniform(rng, 30, 30_000))
        for t in range(tenants)
        for r in range(len(_RESOURCES))
    }
    raw: _Raw = []
    append = raw.append
    clients = itertools.count()
    end = MONDAY + duration

    def url(tenant: int, resource: int, page: int, per_page: int) -> str:
        size = "" if per_page == 20 else f"&per_page={per_page}"
        return f"/api/t/{tenant}/{_RESOURCES[resource]}?page={page}{size}"

    def client() -> None:
        c = f"c{next(clients)}"
        t = arrivals.draw(rng)
        tenant, resource = tenant_pick.draw(rng), resource_pick.draw(rng)
        size = items[tenant, resource]
        kind = rng.random()
        if kind < 0.01:  # a sync job: every page, again and again
            period = rng.uniform(600, 3600)
            stop = min(end, t + rng.uniform(2 * HOUR, 10 * HOUR))
            while t < stop:
                walk = t
                for page in range(1, math.ceil(size / 100) + 1):
                    append((walk, url(tenant, resource, page, 100), c))
                    walk += rng.uniform(0.05, 0.5)
                t += period * rng.uniform(0.98, 1.02)
            return
        per_page, carry_on, gap = (20, 0.6, (2.0, 20.0)) if kind < 0.7 else (50, 0.5, (3.0, 30.0))
        for page in range(1, math.ceil(size / per_page) + 1):
            append((t, url(tenant, resource, page, per_page), c))
            if rng.random() > carry_on:
                return
            t += rng.uniform(*gap)

    _fill(raw, scale, client, "paginated", MONDAY + duration)
    return _finish(raw, scale, (2_000, 200_000), MONDAY + duration)


def tiles(scale: int = 150_000, *, seed: int = 0, duration: float = DAY) -> list[TraceRow]:
    """A slippy map (``/tiles/Z/X/Y.png``): users open it near one of 400
    Zipf-popular places at zoom 10-15 and pan, zoom in and out or jump to
    another place; after each move the browser loads the viewport's tiles it
    does not hold yet, nearest the centre first."""
    _check(scale, duration)
    rng = random.Random(seed)
    arrivals = _Arrivals(MONDAY, duration, _consumer_rate(MONDAY))
    top = 18
    places = [
        (rng.randrange(1 << top), rng.randint(int(0.3 * (1 << top)), int(0.6 * (1 << top))))
        for _ in range(400)
    ]
    place_pick = _Zipf(len(places), 1.0)
    users = max(200, scale // 40)
    raw: _Raw = []
    append = raw.append

    def session() -> None:
        t = arrivals.draw(rng)
        user = f"u{rng.randrange(users)}"
        width, height = (6, 4) if rng.random() < 0.6 else (3, 5)  # desktop, phone
        z = rng.choice((10, 11, 12, 12, 13, 13, 14, 15))
        px, py = places[place_pick.draw(rng)]
        x, y = (px >> (top - z)) + rng.randint(-2, 2), (py >> (top - z)) + rng.randint(-2, 2)
        held: set[tuple[int, int, int]] = set()
        while True:
            side = 1 << z
            x, y = min(max(x, 0), side - 1), min(max(y, 0), side - 1)
            view = [
                (
                    abs(dx - (width - 1) / 2) + abs(dy - (height - 1) / 2),
                    x + dx - width // 2,
                    y + dy - height // 2,
                )
                for dx in range(width)
                for dy in range(height)
            ]
            view.sort()
            for _, tx, ty in view:
                if 0 <= tx < side and 0 <= ty < side and (z, tx, ty) not in held:
                    held.add((z, tx, ty))
                    append((t, f"/tiles/{z}/{tx}/{ty}.png", user))
                    t += rng.uniform(0.01, 0.08)
            t += rng.uniform(2, 20)
            move = rng.random()
            if move < 0.08:
                return
            if move < 0.7:
                dx, dy = 0, 0
                while dx == dy == 0:
                    dx, dy = rng.randint(-2, 2), rng.randint(-2, 2)
                x, y = x + dx, y + dy
            elif move < 0.85 and z < top:
                z, x, y = z + 1, 2 * x + rng.randint(0, 1), 2 * y + rng.randint(0, 1)
            elif move < 0.97 and z > 3:
                z, x, y = z - 1, x // 2, y // 2
            else:
                px, py = places[place_pick.draw(rng)]
                x, y = px >> (top - z), py >> (top - z)

    _fill(raw, scale, session, "tiles", MONDAY + duration)
    return _finish(raw, scale, (2_000, 40_000), MONDAY + duration)


_GLOBAL_WIDGETS: Final = tuple(
    f"/api/metrics/{name}?range={span}"
    for name in ("sales", "signups", "errors", "latency", "traffic", "revenue", "churn", "uptime")
    for span in ("1h", "24h", "7d")
)
_TEAM_WIDGETS: Final = ("board", "alerts", "deploys", "oncall", "sla", "backlog", "incidents")
_USER_WIDGETS: Final = ("inbox", "tasks", "calendar", "notifications", "approvals")


def dashboards(scale: int = 150_000, *, seed: int = 0, duration: float = 5 * DAY) -> list[TraceRow]:
    """Per-user dashboards: each user's dashboard (the team's widgets, some
    company metrics, a few personal ones) loads all its widget endpoints when
    opened and again every 1-10 min while it stays open: most users open it
    one to four times a working day for a few minutes, one in twenty keeps it
    open all day (but over lunch); weekdays, teams of twelve in a few time
    zones."""
    _check(scale, duration)
    rng = random.Random(seed)
    global_pick = _Zipf(len(_GLOBAL_WIDGETS), 0.8)
    team_size = 12
    team_offsets: dict[int, float] = {}
    team_widgets: dict[int, list[str]] = {}
    raw: _Raw = []
    append = raw.append
    users = itertools.count()
    start, end = MONDAY, MONDAY + duration
    days = math.ceil(duration / DAY)

    def open_for(widgets: Sequence[str], user: str, t: float, until: float, every: float) -> None:
        while t < until:
            if start <= t < end:
                load = t
                for url in widgets:
                    append((load, url, user))
                    load += rng.uniform(0.02, 0.3)
            t += every + rng.uniform(-1, 1)

    def user() -> None:
        u = next(users)
        team = u // team_size
        if team not in team_offsets:
            team_offsets[team] = rng.choice((0.0, 0.0, 0.0, 1.0, 1.0, 2.0, -5.0, -8.0))
            own = rng.sample(_TEAM_WIDGETS, rng.randint(2, 4))
            shared = {_GLOBAL_WIDGETS[global_pick.draw(rng)] for _ in range(rng.randint(1, 3))}
            team_widgets[team] = [f"/api/teams/{team}/{w}" for w in own] + sorted(shared)
        personal = [f"/api/users/{u}/{w}" for w in rng.sample(_USER_WIDGETS, rng.randint(1, 3))]
        widgets = team_widgets[team] + personal
        every = rng.choice((60.0, 120.0, 300.0, 300.0, 600.0))
        # A few keep it open all day (a wall screen, the on-call); most open it
        # a few times a day for a while.
        all_day = rng.random() < 0.05
        name = f"u{u}"
        for day in range(days):
            weekday = day % 7  # the trace starts on a Monday
            if (weekday >= 5 and rng.random() > 0.05) or rng.random() < 0.1:
                continue  # the weekend, or away today
            midnight = start + day * DAY - team_offsets[team] * HOUR
            arrive = midnight + rng.uniform(7.5, 10) * HOUR
            leave = midnight + rng.uniform(16, 19) * HOUR
            if not all_day:
                for _ in range(rng.randint(1, 4)):
                    opened = rng.uniform(arrive, leave)
                    open_for(widgets, name, opened, opened + rng.uniform(1, 20) * 60, every)
                continue
            t = arrive
            if rng.random() < 0.6:  # lunch, the tab closed
                lunch = midnight + rng.uniform(11.75, 13.25) * HOUR
                open_for(widgets, name, t, lunch, every)
                t = lunch + rng.uniform(0.5, 1) * HOUR
            open_for(widgets, name, t, leave, every)

    _fill(raw, scale, user, "dashboards", MONDAY + duration)
    return _finish(raw, scale, (300, 20_000), MONDAY + duration)


@dataclass(frozen=True, slots=True)
class LongTailHour:
    """What drew one hour of :func:`long_tail`'s requests: each of its
    ``count`` requests, independently, falls at a uniform time in
    ``[begin, begin + span)`` on item ``order[rank]`` with probability
    ``zipf[rank]`` (the Zipf share, summing to 0.85), or is for new item
    ``id`` with probability ``share`` (summing to 0.15), at a uniform time
    from ``max(born, begin)`` on.  Given these, an hour's requests do not
    depend on any earlier request: what an online policy could know at best
    (``bench/online_bound.py``)."""

    begin: float
    span: float
    count: int
    order: array[int]
    zipf: Sequence[float]
    new: tuple[tuple[int, float, float], ...]  # (id, born, share)


LONG_TAIL_NEW_SHARE: Final = 0.15


def long_tail(
    scale: int = 200_000,
    *,
    seed: int = 0,
    duration: float = 2 * DAY,
    keys: int = 250_000,
    model: list[LongTailHour] | None = None,
) -> list[TraceRow]:
    """A long-tail catalogue under capacity pressure: 85 % of requests Zipf
    (exponent 0.8) over ``keys`` items (``/item/ID``) whose popularity drifts
    (every hour ranks trade places with nearby ones), 15 % for items added
    each hour (``keys`` / 2,000 an hour) whose interest decays over 6-24 h; a
    day-shaped rate.  ``model``: appended each hour's :class:`LongTailHour`."""
    _check(scale, duration)
    if keys < 1000:
        raise ValueError(f"keys must be at least 1000, got {keys!r}")
    rng = random.Random(seed)
    zipf = _Zipf(keys, 0.8)
    order = list(range(keys))  # item id by popularity rank
    rng.shuffle(order)
    hours = max(1, math.ceil(duration / HOUR))
    spans = [min(HOUR, duration - h * HOUR) for h in range(hours)]
    rate = _consumer_rate(MONDAY)
    counts = _apportion(scale, [rate((h + 0.5) * HOUR) * spans[h] for h in range(hours)])
    per_hour_new = max(1, keys // 2000)
    zipf_shares: Sequence[float] = ()
    if model is not None:
        zipf_shares = [(1.0 - LONG_TAIL_NEW_SHARE) * w / zipf.cum[-1] for w in zipf.weights]
    # New items: (id, born, decay seconds, appeal).
    fresh: deque[tuple[int, float, float, float]] = deque()
    next_id = keys
    clients = max(1000, scale // 20)
    raw: _Raw = []
    append = raw.append
    for hour, count in enumerate(counts):
        begin, span = MONDAY + hour * HOUR, spans[hour]
        for _ in range(keys // 1000):  # popularity drifts
            i = int(_log_uniform(rng, 1, keys)) - 1
            j = min(keys - 1, max(0, i + int(i * rng.uniform(-0.5, 0.5))))
            order[i], order[j] = order[j], order[i]
        for _ in range(per_hour_new):
            born = begin + rng.uniform(0, span)
            fresh.append((next_id, born, rng.uniform(6, 24) * HOUR, rng.paretovariate(1.5)))
            next_id += 1
        while begin - fresh[0][1] > 4 * DAY:
            fresh.popleft()
        new = sum(1 for _ in range(count) if rng.random() < LONG_TAIL_NEW_SHARE)
        for rank in zipf.many(rng, count - new):
            append(
                (begin + rng.uniform(0, span), f"/item/{order[rank]}", f"c{rng.randrange(clients)}")
            )
        # Interest in a new item: from its arrival on, decaying.
        out = [f for f in fresh if f[1] < begin + span]
        interest = [a * math.exp(-max(0.0, begin - b) / d) for _, b, d, a in out]
        if model is not None:
            norm = sum(interest)
            model.append(
                LongTailHour(
                    begin,
                    span,
                    count,
                    array("i", order),
                    zipf_shares,
                    tuple(
                        (f[0], f[1], LONG_TAIL_NEW_SHARE * w / norm)
                        for f, w in zip(out, interest, strict=True)
                    ),
                )
            )
        for i, b, _, _ in rng.choices(out, weights=interest, k=new):
            t = max(b, begin)
            append(
                (t + rng.uniform(0, begin + span - t), f"/item/{i}", f"c{rng.randrange(clients)}")
            )
    return _finish(raw, scale, (1_000, 500_000))


def _apportion(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders)."""
    whole = sum(weights)
    shares = [total * w / whole for w in weights]
    counts = [int(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def shop(scale: int = 200_000, *, seed: int = 0, duration: float = 7 * DAY) -> list[TraceRow]:
    """A week of a web shop: sessions arrive at a diurnal and weekly rate and
    go home → category (40, Zipf) → products (300 per category) → cart →
    checkout, with searches and listing pages; about two days in three a
    promotion (an e-mail blast at 9:00, 12:00 or 19:00) lifts the rate for a
    few hours and lands many sessions on its page and its 15 products."""
    _check(scale, duration)
    rng = random.Random(seed)
    categories, per_category = 40, 300
    category_pick = _Zipf(categories, 1.0)
    product_pick = _Zipf(per_category, 0.9)
    term_pick = _Zipf(2_000, 1.0)
    days = math.ceil(duration / DAY)
    promotions: list[tuple[float, float, float, list[tuple[int, int]]]] = []
    for day in range(days):
        if rng.random() < 0.65:
            begin = day * DAY + rng.choice((9.0, 12.0, 19.0)) * HOUR
            products = [(category_pick.draw(rng), rng.randrange(per_category)) for _ in range(15)]
            promotions.append((begin, rng.uniform(2, 5) * HOUR, rng.uniform(1.5, 3.5), products))
    consumer = _consumer_rate(MONDAY)

    def rate(t: float) -> float:
        boost = 1.0
        for begin, length, lift, _ in promotions:
            if begin <= t < begin + length:
                boost += (lift - 1) * math.exp(-2 * (t - begin) / length)
        return consumer(t) * _SHOP_WEEKDAYS[int(t // DAY) % 7] * boost

    arrivals = _Arrivals(MONDAY, duration, rate)
    visitors = max(500, scale // 8)
    raw: _Raw = []
    append = raw.append

    def product_of(category: int) -> str:
        return f"/p/{category * 1000 + product_pick.draw(rng)}"

    def session() -> None:
        t = arrivals.draw(rng)
        user = f"v{rng.randrange(visitors)}"
        category = category_pick.draw(rng)
        running = next(
            (i for i, (b, n, _, _) in enumerate(promotions) if b <= t - MONDAY < b + n), None
        )
        if running is not None and rng.random() < 0.5:
            # From the promotion's e-mail: its page, then some of its products.
            append((t, f"/promo/{running}", user))
            page = f"/promo/{running}"
            for c, p in rng.sample(promotions[running][3], rng.randint(1, 4)):
                t += rng.uniform(5, 90)
                category, page = c, f"/p/{c * 1000 + p}"
                append((t, page, user))
            state = "product"
        else:
            entry = rng.random()
            if entry < 0.55:
                state, page = "home", "/"
            elif entry < 0.85:  # from a search engine or an ad
                state, page = "product", product_of(category)
            else:
                state, page = "search", f"/search?q=t{term_pick.draw(rng)}"
            append((t, page, user))
        listing = 1
        for _ in range(30):
            t += rng.uniform(3, 45) * (1 + rng.expovariate(1.0))
            r = rng.random()
            if state == "home":
                if r < 0.1:
                    return
                if r < 0.8:
                    category, listing, state = category_pick.draw(rng), 1, "category"
                    page = f"/c/{category}"
                else:
                    state, page = "search", f"/search?q=t{term_pick.draw(rng)}"
            elif state == "category":
                if r < 0.1:
                    return
                if r < 0.75:
                    state, page = "product", product_of(category)
                elif r < 0.9:
                    listing += 1
                    page = f"/c/{category}?page={listing}"
                else:
                    category, listing = category_pick.draw(rng), 1
                    page = f"/c/{category}"
            elif state == "search":
                if r < 0.2:
                    return
                if r < 0.8:
                    category = zlib.crc32(page.encode()) % categories
                    state, page = "product", product_of(category)
                else:
                    page = f"/search?q=t{term_pick.draw(rng)}"
            elif state == "product":
                if r < 0.25:
                    return
                if r < 0.55:
                    page = product_of(category)
                elif r < 0.8:
                    state, page = "category", f"/c/{category}"
                elif r < 0.92:
                    state, page = "cart", "/cart"
                else:
                    state, page = "search", f"/search?q=t{term_pick.draw(rng)}"
            elif state == "cart":
                if r < 0.4:
                    return
                if r < 0.75:
                    append((t, "/checkout", user))
                    if rng.random() < 0.8:
                        t += rng.uniform(20, 120)
                        append((t, "/checkout/payment", user))
                        if rng.random() < 0.9:
                            t += rng.uniform(5, 30)
                            append((t, "/checkout/done", user))
                    return
                state, page = "category", f"/c/{category}"
            append((t, page, user))

    _fill(raw, scale, session, "shop", MONDAY + duration)
    return _finish(raw, scale, (2_000, 150_000), MONDAY + duration)


def block_storage(scale: int = 200_000, *, seed: int = 0, duration: float = DAY) -> list[TraceRow]:
    """Block storage served over HTTP (``/vol/V/blk/N``, 64 KiB blocks): 32
    hosts on 8 volumes of a million blocks; half of their operations are sequential
    runs of 8-1,024 blocks (a third of them re-reading an extent the host read
    before), a third random reads in three hot regions per volume (metadata,
    journal, an index), the rest scattered single reads; busier at night
    (backups)."""
    _check(scale, duration)
    rng = random.Random(seed)
    volumes, blocks, hosts = 8, 1 << 20, 32
    attached = [rng.sample(range(volumes), rng.randint(1, 3)) for _ in range(hosts)]
    hot = [
        [(rng.randrange(blocks - 4096), rng.choice((512, 1024, 4096))) for _ in range(3)]
        for _ in range(volumes)
    ]
    hot_pick = _Zipf(4096, 1.0)

    def rate(t: float) -> float:
        hour = (t / HOUR) % 24
        return 2.0 if 1 <= hour < 4 else 1.0

    arrivals = _Arrivals(MONDAY, duration, rate)
    recent: list[deque[tuple[int, int, int]]] = [deque(maxlen=50) for _ in range(hosts)]
    raw: _Raw = []
    append = raw.append

    def run() -> None:
        t = arrivals.draw(rng)
        host = rng.randrange(hosts)
        client = f"h{host}"
        kind = rng.random()
        if kind < 0.5:
            extents = recent[host]
            if extents and rng.random() < 0.35:
                volume, first, length = rng.choice(extents)
            else:
                volume = rng.choice(attached[host])
                length = int(_log_uniform(rng, 8, 1024))
                first = rng.randrange(blocks - length)
                extents.append((volume, first, length))
            for n in range(first, first + length):
                append((t, f"/vol/{volume}/blk/{n}", client))
                t += rng.uniform(0.002, 0.02)
        elif kind < 0.83:
            volume = rng.choice(attached[host])
            base, size = rng.choice(hot[volume])
            for _ in range(rng.randint(1, 20)):
                append((t, f"/vol/{volume}/blk/{base + hot_pick.draw(rng) % size}", client))
                t += rng.uniform(0.01, 0.5)
        else:
            for _ in range(rng.randint(1, 8)):
                volume = rng.choice(attached[host])
                append((t, f"/vol/{volume}/blk/{rng.randrange(blocks)}", client))
                t += rng.uniform(0.005, 0.1)

    _fill(raw, scale, run, "block-storage", MONDAY + duration)
    return _finish(raw, scale, (65_536, 65_536), MONDAY + duration)


#: Every kind by name: ``generator(scale, *, seed=0, duration=...)`` → sorted rows.
WORKLOADS: Final[dict[str, Callable[..., list[TraceRow]]]] = {
    "polling": polling,
    "browsing": browsing,
    "cdn": cdn,
    "sequences": sequences,
    "paginated": paginated,
    "tiles": tiles,
    "dashboards": dashboards,
    "long-tail": long_tail,
    "shop": shop,
    "block-storage": block_storage,
}


def generate(
    kind: str, scale: int | None = None, *, seed: int = 0, duration: float | None = None
) -> list[TraceRow]:
    """The rows of workload ``kind`` (its defaults where ``scale`` or
    ``duration`` is None); ValueError naming an unknown kind."""
    try:
        generator = WORKLOADS[kind]
    except KeyError:
        raise ValueError(f"unknown workload {kind!r}; known: {', '.join(WORKLOADS)}") from None
    options: dict[str, float | int] = {"seed": seed}
    if duration is not None:
        options["duration"] = duration
    return generator(scale, **options) if scale is not None else generator(**options)


def write_csv(path: str | Path, rows: Sequence[TraceRow]) -> None:
    """Write ``rows`` as a trace file (``ts,key,size,client``) that
    :func:`warmer.trace.read_trace` reads back as the same rows."""
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(",".join(HEADER) + "\n")
        out.writelines(
            f"{ts:.3f},{key},{'' if size is None else size},{client}\n"
            for ts, key, size, client in rows
        )
