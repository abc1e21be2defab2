"""What comes next in a numbered series: the next page, block, segment or tile.

Many URLs number what they serve (``/api/orders?page=3``, ``/vol/2/blk/4711``,
``/video/9/seg/12.ts``), and clients walk those numbers in steps: page 3,
then 4; block 4711, then 4712.  A first-order sequence model
(:mod:`warmer.sequences`) learns such a step key by key, so it can only
predict a key it has seen followed before.  :class:`StrideModel` learns it
per *template*: the key with its numbers taken out.  When a client's
consecutive requests share a template and differ in one number by ``d``,
that counts as a step ``(field, d)`` of the template; after a request, the
template's most frequent step, applied to the key just asked for, names the
key the client probably asks for next, even one nobody has asked for yet.
This is the stride prefetcher of processors and the read-ahead of file
systems, learned from the traffic instead of assumed.

The rule is the ``markov`` baseline's, lifted from keys to templates: steps
counted over each client's consecutive requests (within ``max_gap`` seconds,
repeats of the same key ignored), pooled over clients; a prediction needs a
step seen at least ``min_count`` times that makes at least ``min_share`` of
the template's steps.  Whether such a prediction is worth a warm fetch is
the predictive model's calibration to judge, like any other decision.

Bounded memory (:meth:`StrideModel.memory_bound`): at most ``max_clients``
clients and ``max_templates`` templates (least recently seen forgotten),
:data:`STEPS_KEPT` steps per template, keys of at most :data:`MAX_FIELDS`
numbers of at most :data:`MAX_DIGITS` digits and ``max_name_bytes``.

Sans-I/O (DESIGN rule 2): time is the ``ts`` each observation carries.
"""

from __future__ import annotations

import re
import sys
from collections import OrderedDict
from typing import Final

#: Numbers a key may hold to be followed (more: an id soup, not a series).
MAX_FIELDS: Final = 8
#: Digits a number may have (longer: an id, not a position in a series).
MAX_DIGITS: Final = 12
#: Largest step followed, in either direction (a jump, not a walk, beyond).
MAX_STEP: Final = 64
#: Steps counted per template (the least counted replaced by a new one).
STEPS_KEPT: Final = 8
#: A template is followed by sampling once it counted this many steps and its
#: most frequent one makes less than 1 / HOPELESS of them: then one step in
#: SAMPLE_EVERY is counted.
SAMPLE_AFTER: Final = 512
HOPELESS: Final = 20
SAMPLE_EVERY: Final = 8
#: Keys whose split into template and numbers is kept, to split a hot key once.
SPLITS_KEPT: Final = 2048
_UNSPLIT: Final = ("", ())

_NUMBER: Final = re.compile(r"(\d+)")
_STR_HEADER_BYTES: Final = 80  # sys.getsizeof of a str is at most this + 4 per character
# Upper estimates of one entry's cost besides its strings (CPython 3.11,
# 64-bit; rounded up): an OrderedDict slot and node plus what it holds.
_CLIENT_BYTES: Final = 512  # (template, numbers, key, ts) and the numbers' tuple
_TEMPLATE_BYTES: Final = 512  # [total, steps dict] and the dict
_STEP_BYTES: Final = 128  # one (field, step) -> count slot
_SPLIT_BYTES: Final = 256  # a dict slot, the (template, numbers) tuple
_FIXED_BYTES: Final = 16 * 1024

# A key split at its numbers: the text around them (one more part than
# numbers) and the numbers as written.
_Parts = tuple[str, ...]
_Numbers = tuple[str, ...]


def split_numbers(key: str) -> tuple[str, _Numbers] | None:
    """``key``'s template (its text with each number replaced by ``\x00``)
    and its numbers as written; None when it holds none or too many."""
    pieces = _NUMBER.split(key)  # text, number, text, ..., text: one pass
    if len(pieces) == 1:
        return None
    numbers = tuple(pieces[1::2])
    if len(numbers) > MAX_FIELDS:
        return None
    for number in numbers:
        if len(number) > MAX_DIGITS:
            return None
    return "\x00".join(pieces[0::2]), numbers


def stepped(template: str, numbers: _Numbers, field: int, step: int) -> str | None:
    """The key of ``template`` with ``numbers`` where number ``field`` moved
    by ``step``: written as wide as before when it was zero-padded; None
    below zero."""
    value = int(numbers[field]) + step
    if value < 0:
        return None
    written = numbers[field]
    text = str(value)
    if written[0] == "0" and len(written) > len(text):
        text = text.zfill(len(written))
    moved = list(numbers)
    moved[field] = text
    parts = template.split("\x00")
    out = [parts[0]]
    for number, part in zip(moved, parts[1:], strict=True):
        out.append(number)
        out.append(part)
    return "".join(out)


def carry_step(source: str, key: str, other: str) -> str | None:
    """``other`` (another name of ``source``: its URL where keys carry the
    host, say) with the number that differs between ``source`` and its
    neighbour ``key`` moved the same way; None when ``other`` does not hold
    ``source``'s numbers in the same order at its end."""
    a, b, c = split_numbers(source), split_numbers(key), split_numbers(other)
    if a is None or b is None or c is None or len(a[1]) != len(b[1]):
        return None
    moved = [i for i, (x, y) in enumerate(zip(a[1], b[1], strict=True)) if x != y]
    shift = len(a[1]) - len(c[1])
    if len(moved) != 1 or shift < 0 or a[1][shift:] != c[1] or moved[0] < shift:
        return None
    field = moved[0] - shift
    return stepped(c[0], c[1], field, int(b[1][moved[0]]) - int(a[1][moved[0]]))


class _Template:
    """A template's steps: how many were counted from it (to any key), the
    most frequent moves of one number, ``(field, step) -> count``, and the
    most counted of them."""

    __slots__ = ("best", "best_count", "name", "skipped", "steps", "total")

    def __init__(self, name: str) -> None:
        self.name = name
        self.total = 0
        self.steps: dict[tuple[int, int], int] = {}
        self.best = (0, 0)
        self.best_count = 0
        self.skipped = 0


class StrideModel:
    """Steps between numbered keys, counted per template over each client's
    consecutive requests (see the module's docstring)."""

    def __init__(
        self,
        *,
        max_clients: int = 20_000,
        max_templates: int = 5_000,
        max_gap: float = 1800.0,
        min_count: int = 3,
        min_share: float = 0.3,
        max_name_bytes: int = 2048,
    ) -> None:
        if max_clients < 1 or max_templates < 1:
            raise ValueError("max_clients and max_templates must be at least 1")
        self.max_clients = max_clients
        self.max_templates = max_templates
        self.max_gap = max_gap
        self.min_count = min_count
        self.min_share = min_share
        self.max_name_bytes = max_name_bytes
        # Names of at most this many characters fit max_name_bytes whatever
        # their kind, so most are checked with len() alone.
        self._short = max(0, (max_name_bytes - _STR_HEADER_BYTES) // 4)
        # client -> (template, numbers, ts) of its previous request.
        self._clients: OrderedDict[str, tuple[str, _Numbers, float]] = OrderedDict()
        self._templates: OrderedDict[str, _Template] = OrderedDict()
        # key -> split_numbers(key), for the keys seen lately (hot keys
        # are asked for again and again: a dict lookup, not a regex).
        self._splits: dict[str, tuple[str, _Numbers] | None] = {}

    @property
    def templates(self) -> int:
        return len(self._templates)

    def observe(self, client: str, key: str, ts: float) -> tuple[str, float] | None:
        """Count the step from ``client``'s previous request to ``key``; return
        the key it probably asks for next and the share of the template's
        steps that took it there, or None."""
        splits = self._splits
        split = splits.get(key, _UNSPLIT)
        if split is _UNSPLIT:
            split = split_numbers(key)
            if len(key) > self._short and sys.getsizeof(key) > self.max_name_bytes:
                split = None  # never remembered
            if len(splits) >= SPLITS_KEPT:
                splits.clear()  # a cache of the keys asked for lately, not an index
            splits[key] = split
        clients = self._clients
        previous = clients.get(client)
        if split is None:
            # Not a numbered key: a step out of the series, and the end of
            # the client's walk.
            if previous is not None:
                if ts - previous[2] <= self.max_gap:
                    self._count(previous[0], previous[1], "", ())
                del clients[client]
            return None
        template, numbers = split
        entry = self._templates.get(template)
        if entry is not None:
            template = entry.name  # one string per template, not one per client
        if previous is not None:
            if previous[1] == numbers and previous[0] == template:
                return self._predict(entry, numbers)  # a repeat is no step
            if ts - previous[2] <= self.max_gap:
                self._count(previous[0], previous[1], template, numbers)
            clients.move_to_end(client)
        elif len(client) > self._short and sys.getsizeof(client) > self.max_name_bytes:
            return self._predict(entry, numbers)  # never remembered
        clients[client] = (template, numbers, ts)
        if len(clients) > self.max_clients:
            clients.popitem(last=False)
        return self._predict(entry, numbers)

    def _count(self, template: str, numbers: _Numbers, to: str, to_numbers: _Numbers) -> None:
        templates = self._templates
        entry = templates.get(template)
        if entry is None:
            entry = templates[template] = _Template(template)
            if len(templates) > self.max_templates:
                templates.popitem(last=False)
        else:
            if entry.total >= SAMPLE_AFTER and entry.best_count * HOPELESS < entry.total:
                # Walks of this template go every way (ids, not positions):
                # count one step in SAMPLE_EVERY, which keeps every share
                # as it is, for a fraction of the work.
                entry.skipped += 1
                if entry.skipped % SAMPLE_EVERY:
                    return
            templates.move_to_end(template)
        entry.total += 1
        if to != template:
            return  # another kind of key: a step out of the series
        if len(numbers) == 1:
            field = 0
        else:
            field = -1
            for i, (a, b) in enumerate(zip(numbers, to_numbers, strict=True)):
                if a != b:
                    if field >= 0:
                        return  # two numbers moved: not a step of one
                    field = i
            if field < 0:
                return
        step = int(to_numbers[field]) - int(numbers[field])
        if not -MAX_STEP <= step <= MAX_STEP or step == 0:
            return
        steps = entry.steps
        move = (field, step)
        count = steps.get(move)
        if count is not None:
            count += 1
        elif len(steps) < STEPS_KEPT:
            count = 1
        else:
            # Space-Saving: the new step takes the least counted one's place
            # and count, so a step that became the usual one rises.
            least = min(steps, key=steps.__getitem__)
            count = steps.pop(least) + 1
        steps[move] = count
        if count > entry.best_count or move == entry.best:
            entry.best, entry.best_count = move, count

    def _predict(self, entry: _Template | None, numbers: _Numbers) -> tuple[str, float] | None:
        if entry is None:
            return None
        count = entry.best_count
        if count < self.min_count or count < self.min_share * entry.total:
            return None
        key = stepped(entry.name, numbers, *entry.best)
        return None if key is None else (key, count / entry.total)

    def memory_bound(self) -> int:
        """Bytes this model can take at most, whatever the traffic."""
        name = _STR_HEADER_BYTES + 4 * self.max_name_bytes
        numbers = MAX_FIELDS * (_STR_HEADER_BYTES + 4 * MAX_DIGITS)
        per_client = _CLIENT_BYTES + 2 * name + numbers  # its id, a template
        per_template = _TEMPLATE_BYTES + name + STEPS_KEPT * _STEP_BYTES
        per_split = _SPLIT_BYTES + 2 * name + numbers  # the key, its template and numbers
        return (
            _FIXED_BYTES
            + self.max_clients * per_client
            + self.max_templates * per_template
            + SPLITS_KEPT * per_split
        )
