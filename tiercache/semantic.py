"""A semantic cache: answers reused for contexts that mean nearly the same, per scope.

``SemanticCache(cache, embed=..., threshold=0.9)`` over a TieredCache (``AsyncSemanticCache``
over an AsyncTieredCache) stores answers under the embedding of their context and answers
``get(context, scope=...)`` with the stored answer whose context is nearest, if its cosine
similarity reaches the threshold. Needs numpy (``pip install tiercache[semantic]``).

Tiers. Each process keeps, per scope it has used, an index of that scope's entries in memory
(L1: a float32 matrix searched exactly with numpy, one matrix product a lookup). Redis (L2)
holds the entries themselves, so every process finds what any process stored, and a process
that has not seen a scope loads it from Redis on first use. Layout, under the view
``cache.namespace("semantic").namespace(name).namespace(scope)``:

  e:<id>     one entry (msgpack: vector, answer, context, metadata, expiry), with its TTL;
             id is a digest of the embedded text, so the same context replaces its entry
  %log       a sorted set: every entry id scored with the version of its last change, plus
             "%v" (the scope's version, bumped by every change), "%floor" (below which ids
             may have been trimmed) and "%g" (the log's generation, new when the log is
             made anew); a script changes it atomically (one key)
  %fresh     a cached token: while this process's L1 holds it, the scope's index is current

Keeping indexes current. A change (set, delete) writes the entry, bumps %log, then changes
%fresh through the TieredCache (incr: a write that calls no writer of the user's), which
publishes the invalidation every process hears, so their L1 drops the token. A lookup
whose L1 holds the token searches its index at once; otherwise it reads the token again
(get_or_load: the fill guard drops it if another change lands meanwhile), then reads the
ids %log changed after its index's version and fetches those entries. Everything that
empties the TieredCache's L1 (a lost channel, clear, l1_ttl) drops the token too, so an
index is never trusted longer than the TieredCache trusts L1.

TTL applies on both tiers: Redis expires the entry, and the index holds each entry's expiry
and ignores it past that. Scopes are namespaces: a lookup searches its own scope's index,
built only from keys under its own namespace, whose entries also carry their scope, checked
on load.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import math
import os
import re
import threading
import time
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, NamedTuple

import msgpack

try:
    import numpy as np
except ImportError as exc:  # pragma: no cover - the extra is installed in every test run
    raise ImportError("tiercache.semantic needs numpy: pip install 'tiercache[semantic]'") from exc

from redis.exceptions import RedisError

from .codec import key_slot, slot_tag
from .core.stats import histogram_dict
from .errors import CacheError, CacheUnavailable, RedisReplyError
from .local import Histogram

log = logging.getLogger(__name__)

Context = str | Sequence[Any]
Vector = Any  # a 1-d float32 numpy array

TOKEN = "%fresh"
TOKEN_TTL = 86_400.0  # a token of a scope nobody changes or reads goes after a day
LOG = "%log"
VERSION = "%v"
FLOOR = "%floor"
GENERATION = "%g"
META = (VERSION, FLOOR, GENERATION)
FETCH_BATCH = 1000
SIMILARITY_SLACK = 1e-5  # float32 rounding: the same context must match at threshold 1.0
TRIMS_PER_LOOK = 100  # deleted ids a refresh forgets at most (expired ones go with changes)
LOCKS = 64  # lookups of scopes that share a stripe wait for each other's refresh
MAX_SCOPES = 10_000  # indexes kept per process; the least recently used goes past that
#: Similarity histogram bounds (cosine similarity of hits).
SIMILARITY_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 1.0)

# One change to a scope, atomically: the entry written (op "set") or deleted (op "del"), then
# the log's version bumped and the entry's id scored with it. A log made anew gets a
# generation ("%g", scored with the server's clock in microseconds), so an index of an
# earlier log (cleared, expired) reloads even once versions caught up. The expiry set (exp:
# id scored with its expiry, server ms) lets each change forget up to 50 ids whose entries
# expired, raising the floor to their scores as TRIM_SCRIPT does (an index that missed such
# an id's last change, and so may hold an older answer for it, reloads); the log lives at
# least as long as the longest-lived entry (no expiry while any entry has none), and the
# expiry set exactly as long as the log.
# KEYS: log, exp, entry. ARGV: id, op, data, ttl in ms (0: none). Returns the new version,
# or 0 for a delete that found nothing (nothing changed). The #!lua line (Redis 7) has Redis
# refuse the whole script when it is out of memory: without it, a script runs until its
# first command that needs memory and stops there, the DEL done and the log not told.
CHANGE_SCRIPT = """#!lua
local log, exp, entry, id, op = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
local ttl = tonumber(ARGV[4])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if op == 'del' then
  if redis.call('DEL', entry) == 0 then return 0 end
  redis.call('ZREM', exp, id)
elseif ttl > 0 then
  redis.call('SET', entry, ARGV[3], 'PX', ttl)
  redis.call('ZADD', exp, now_ms + ttl, id)
else
  redis.call('SET', entry, ARGV[3])
  redis.call('ZREM', exp, id)
end
local existed = redis.call('EXISTS', log)
if existed == 0 then
  redis.call('ZADD', log, tonumber(now[1]) * 1000000 + tonumber(now[2]), '%g')
end
local v = redis.call('ZINCRBY', log, 1, '%v')
redis.call('ZADD', log, v, id)
local floor = tonumber(redis.call('ZSCORE', log, '%floor') or '0')
local raised = floor
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', now_ms, 'LIMIT', 0, 50)) do
  local score = tonumber(redis.call('ZSCORE', log, dead) or '0')
  if score > raised then raised = score end
  redis.call('ZREM', log, dead)
  redis.call('ZREM', exp, dead)
end
if raised > floor then redis.call('ZADD', log, raised, '%floor') end
if op == 'set' then
  if ttl == 0 then
    redis.call('PERSIST', log)
  else
    local left = redis.call('PTTL', log)
    if existed == 0 or (left >= 0 and left < ttl) then
      redis.call('PEXPIRE', log, ttl)
    end
  end
end
local left = redis.call('PTTL', log)  -- the expiry set lives exactly as long as the log
if left > 0 then redis.call('PEXPIRE', exp, left) elseif left == -1 then redis.call('PERSIST', exp) end
return tonumber(v)
"""

# Forget an id whose entry is gone, unless it changed since it was seen: KEYS[1] log,
# ARGV[1] id, ARGV[2] the score it was seen with. The floor rises to that score, so an index
# older than it reloads the scope instead of missing the trimmed deletion.
TRIM_SCRIPT = """#!lua
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  local floor = tonumber(redis.call('ZSCORE', KEYS[1], '%floor') or '0')
  if tonumber(score) > floor then redis.call('ZADD', KEYS[1], score, '%floor') end
  return 1
end
return 0
"""


class SemanticError(CacheError, ValueError):
    """A context or embedding the semantic cache cannot use (says which and why)."""


class Match(NamedTuple):
    """A stored answer found for a context: its similarity to the context asked about, and
    the context, metadata and scope it was stored with."""

    answer: Any
    similarity: float
    context: Any
    metadata: dict[str, Any] | None
    scope: str


# -- the offline default embedding ----------------------------------------------------------


# What the default embedding ignores: whitespace and sentence punctuation. Symbols that can
# carry meaning (+ - * / # < > = % $ and the like, emoji) are kept: "What is C++?" and "What
# is C#?" must not be the same text.
_IGNORED = re.compile(r"[\s.,!?;:'\"()\[\]{}\u00bf\u00a1\u2026\u201c\u201d\u2018\u2019]+")


class HashedNgrams:
    """Character n-grams and words, hashed into a fixed number of dimensions (the hashing
    trick), L2-normalised: no model, no download, the same vector in every process.

    Good for near-duplicates: the same question with other casing or sentence punctuation
    (symbols such as + # < - count), a word
    changed, added or dropped in a longer text (at the default threshold of 0.9: "What is
    the capital of France?" matches "what's the capital of france" at 0.90, and not "What
    is the capital of Germany?", at 0.80: one word in six decides, so keep the threshold
    high). It knows nothing of meaning: a paraphrase with other words
    ("How do I reset my password?" / "I forgot my login secret") is as far as an unrelated
    text. Plug in a sentence-embedding model for that (README: Semantic cache)."""

    def __init__(self, dim: int = 384, n: int = 3) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 8:
            raise ValueError(f"dim must be an int >= 8, got {dim!r}")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 8:
            raise ValueError(f"n must be an int from 1 to 8, got {n!r}")
        self.dim, self.n = dim, n

    def __call__(self, text: str) -> Vector:
        text = " ".join(_IGNORED.sub(" ", text.casefold()).split())  # case and punctuation go
        vector = np.zeros(self.dim, dtype=np.float32)
        padded = f" {text} "
        grams = [padded[i : i + self.n] for i in range(max(len(padded) - self.n + 1, 1))]
        for feature in (*grams, *(f"w:{word}" for word in text.split())):
            code = zlib.crc32(feature.encode("utf-8", "surrogatepass"))
            vector[code % self.dim] += 1.0 if code & 0x80000000 else -1.0
        norm = float(np.linalg.norm(vector))
        return vector / np.float32(norm) if norm else vector

    def __repr__(self) -> str:
        return f"HashedNgrams(dim={self.dim}, n={self.n})"


# -- one scope's in-process index -----------------------------------------------------------


class ScopeIndex:
    """The entries of one scope known to this process: unit vectors in a float32 matrix
    (rows 0..size-1), and per row the entry's id, expiry (wall clock; inf for none) and what
    a match returns. version: the last change of the scope's log applied."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.vectors = np.zeros((0, dim), dtype=np.float32)  # an empty scope costs no rows
        self.expires = np.full(0, math.inf)
        self.ids: list[str] = []
        self.payloads: list[tuple[Any, Any, Any]] = []  # (answer, context, metadata)
        self.rows: dict[str, int] = {}
        self.version = 0
        self.generation = 0  # of the scope's log this index follows
        self.l2_ids = 0  # ids in the scope's log at the last look (entries, and dead ones not yet trimmed)

    @property
    def size(self) -> int:
        return len(self.ids)

    def upsert(self, entry_id: str, vector: Vector, expires: float, payload: tuple[Any, Any, Any]) -> None:
        row = self.rows.get(entry_id)
        if row is None:
            row = len(self.ids)
            if row == len(self.vectors):  # grow by doubling: amortised O(1) a row
                more = max(len(self.vectors), 4)
                self.vectors = np.concatenate([self.vectors, np.zeros((more, self.dim), dtype=np.float32)])
                self.expires = np.concatenate([self.expires, np.full(more, math.inf)])
            self.ids.append(entry_id)
            self.payloads.append(payload)
            self.rows[entry_id] = row
        else:
            self.payloads[row] = payload
        self.vectors[row] = vector
        self.expires[row] = expires

    def remove(self, entry_id: str) -> None:
        row = self.rows.pop(entry_id, None)
        if row is None:
            return
        last = len(self.ids) - 1
        if row != last:  # the last row takes the removed one's place
            moved = self.ids[last]
            self.vectors[row] = self.vectors[last]
            self.expires[row] = self.expires[last]
            self.ids[row] = moved
            self.payloads[row] = self.payloads[last]
            self.rows[moved] = row
        self.ids.pop()
        self.payloads.pop()
        self.expires[last] = math.inf

    def nearest(self, query: Vector, now: float) -> tuple[int, float] | None:
        """The live row most similar to query (a unit vector) and its similarity."""
        size = len(self.ids)
        if not size:
            return None
        similarities = self.vectors[:size] @ query
        similarities[self.expires[:size] <= now] = -np.inf
        row = int(np.argmax(similarities))
        similarity = float(similarities[row])
        return None if similarity == -np.inf else (row, similarity)

    def live(self, now: float) -> int:
        return int(np.count_nonzero(self.expires[: len(self.ids)] > now))

    def sweep(self, now: float) -> None:
        """Let go of the rows past their expiry."""
        for row in np.flatnonzero(self.expires[: len(self.ids)] <= now)[::-1]:
            self.remove(self.ids[int(row)])

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.expires.nbytes)


# -- requests: what a plan asks its driver for (sync or asyncio) -------------------------------


class Touch(NamedTuple):
    """Read the scope's token through the TieredCache (get_or_load; the loader makes it)."""

    view: Any


class Announce(NamedTuple):
    """Change the scope's token through the TieredCache (incr: a write that calls no
    writer= of the user's): every process's L1 drops it."""

    view: Any


class ReadLog(NamedTuple):
    """The log's members scored from `since` on (None: all) with their scores, its version,
    floor and generation, and its size (a Log)."""

    key: bytes
    since: int | None


class Fetch(NamedTuple):
    keys: list[bytes]


class Change(NamedTuple):
    """CHANGE_SCRIPT: an entry stored (data) or deleted (data None), with the log's bump."""

    keys: tuple[bytes, bytes, bytes]  # log, exp, entry
    entry_id: str
    data: bytes | None
    ttl_ms: int  # 0: none


class Trim(NamedTuple):
    log: bytes
    entry_id: str
    score: int


class Clear(NamedTuple):
    view: Any


Request = Touch | Announce | ReadLog | Fetch | Change | Trim | Clear
Plan = Generator[Request, Any, Any]


# -- the engine shared by both drivers ------------------------------------------------------


class _Engine:
    """Configuration, indexes, counters and the plans of a semantic cache; the drivers
    embed the context (the user's function, outside any lock) and carry out the plans'
    requests, one plan at a time."""

    def __init__(
        self,
        cache: Any,
        embed: Callable[[str], Any] | None,
        threshold: float,
        turns: int,
        name: str,
        ttl: float | None,
    ) -> None:
        if getattr(cache, "redis", None) is None:
            raise TypeError("SemanticCache needs a TieredCache (or AsyncTieredCache) on Redis")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not -1 <= threshold <= 1:
            raise ValueError(f"threshold must be a cosine similarity from -1 to 1, got {threshold!r}")
        if isinstance(turns, bool) or not isinstance(turns, int) or turns < 1:
            raise ValueError(f"turns must be an int >= 1, got {turns!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        if embed is not None and not callable(embed):
            raise TypeError(f"embed must be a function of a str, got {embed!r}")
        self.cache = cache
        self.embed = embed if embed is not None else HashedNgrams()
        self.threshold = float(threshold)
        self.turns = turns
        self.name = name
        self.default_ttl_ms = cache._shared.ttl_ms(ttl) or 0
        self.root = cache.namespace("semantic").namespace(name)
        self.dim: int | None = None
        self.indexes: OrderedDict[str, ScopeIndex] = OrderedDict()  # least recently used first
        self.hits = self.misses = self.errors = self.bad_entries = 0
        self.similarity = Histogram(SIMILARITY_BUCKETS)

    # -- input ----------------------------------------------------------------------------

    def text_of(self, context: Context) -> str:
        """What is embedded: the text, or the last `turns` turns ("role: content" lines)."""
        if isinstance(context, str):
            text = context
        elif isinstance(context, Sequence) and not isinstance(context, bytes | bytearray):
            if not context:
                raise SemanticError("context is an empty list of turns")
            lines = []
            for turn in list(context)[-self.turns :]:
                if isinstance(turn, str):
                    lines.append(turn)
                elif isinstance(turn, dict) and isinstance(turn.get("content"), str):
                    role = turn.get("role")
                    lines.append(f"{role}: {turn['content']}" if isinstance(role, str) else turn["content"])
                else:
                    raise SemanticError(f"a turn must be a str or a dict with a str 'content', got {turn!r:.80}")
            text = "\n".join(lines)
        else:
            raise SemanticError(f"context must be a str or a list of turns, got {type(context).__name__}")
        if not text.strip():
            raise SemanticError("context is empty: nothing to embed")
        return text

    @staticmethod
    def check_scope(scope: str) -> str:
        if not isinstance(scope, str) or not scope:
            raise SemanticError(f"scope must be a non-empty str, got {scope!r}")
        try:
            scope.encode("utf-8")
        except UnicodeEncodeError:
            raise SemanticError(f"scope must be valid text (no lone surrogates), got {scope!r}") from None
        return scope

    def unit(self, raw: Any, text: str) -> Vector:
        """embed's result as a unit float32 vector, or SemanticError naming what is wrong."""
        try:
            vector = np.asarray(raw, dtype=np.float64)  # normalised in float64: 1e300 is a direction too
        except (TypeError, ValueError) as exc:
            raise SemanticError(f"embed returned something that is not a vector of numbers: {exc}") from None
        if vector.ndim != 1 or not vector.size:
            raise SemanticError(f"embed must return a 1-d vector of numbers, got shape {vector.shape}")
        if self.dim is not None and vector.size != self.dim:
            raise SemanticError(f"embed returned {vector.size} dimensions, but this cache's vectors have {self.dim}")
        if not np.all(np.isfinite(vector)):
            raise SemanticError(f"embed returned NaN or infinite values for {text!r:.80}")
        largest = float(np.max(np.abs(vector)))
        if largest == 0.0:
            raise SemanticError(f"embed returned a zero vector for {text!r:.80}: it is similar to nothing")
        vector = vector / largest  # first to at most 1, so the norm cannot overflow
        self.dim = int(vector.size)
        return (vector / np.linalg.norm(vector)).astype(np.float32)

    @staticmethod
    def entry_id(text: str) -> str:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()

    def view(self, scope: str) -> Any:
        return self.root.namespace(scope)

    def ttl_ms(self, ttl: Any) -> int:
        """An entry's ttl in ms (None: this cache's ttl, else the TieredCache's default_ttl);
        0 for none."""
        if ttl is None:
            return self.default_ttl_ms
        return self.cache._shared.ttl_ms(ttl) or 0

    # -- plans ----------------------------------------------------------------------------

    def current(self, scope: str) -> Plan:
        """The scope's index, brought up to date with Redis unless this process's L1 says it
        is (the token); None before this process has a vector to search with."""
        view = self.view(scope)
        index = self.indexes.get(scope)
        if index is not None:
            with contextlib.suppress(KeyError):  # another scope's lookup may have evicted it
                self.indexes.move_to_end(scope)
            if view.cached_locally(TOKEN):
                return index
        refreshed = False
        try:
            yield Touch(view)  # from here on, a change to the scope drops the token again
            log_key = view.redis_key(LOG)
            log = yield ReadLog(log_key, None if index is None else index.version)
            if index is not None and (
                log.generation != index.generation or log.version < index.version or log.floor > index.version
            ):
                # a new log (cleared or expired meanwhile), or trimmed past this index: load it whole
                index = None
                log = yield ReadLog(log_key, None)
            if self.dim is None:  # no vector yet in this process: nothing to search with
                return None
            since = 0 if index is None else index.version
            changed = {member: score for member, score in log.scores.items() if member not in META and score > since}
            if index is None:
                index = ScopeIndex(self.dim)
                index.generation = log.generation
            found = (yield Fetch([self.keys(scope, entry_id)[2] for entry_id in changed])) if changed else []
            gone = []
            for (entry_id, score), data in zip(changed.items(), found, strict=True):
                entry = self._decode(data, scope)
                if entry is None:
                    index.remove(entry_id)
                    if data is None:  # deleted or expired (not another dimension's: that is left alone)
                        gone.append((entry_id, score))
                else:
                    index.upsert(entry_id, *entry)
            index.sweep(time.time())
            index.version = max(index.version, log.version)
            index.l2_ids = log.ids
            self.indexes[scope] = index
            self.indexes.move_to_end(scope)
            while len(self.indexes) > MAX_SCOPES:  # the least recently used index goes
                with contextlib.suppress(KeyError):  # (or another thread's eviction took it)
                    self.indexes.popitem(last=False)
            refreshed = True
        finally:
            if not refreshed:  # failed or cancelled part-way: the token is in L1, the index is not
                self.indexes.pop(scope, None)  # current; the next lookup loads the scope whole
        for entry_id, score in gone[:TRIMS_PER_LOOK]:  # deletions every index has had the chance to see
            yield Trim(log_key, entry_id, score)
        return index

    def _decode(self, data: bytes | None, scope: str) -> tuple[Vector, float, tuple[Any, Any, Any]] | None:
        """An entry as the index holds it; None if gone, or not of this scope and dimension
        (counted in bad_entries)."""
        if data is None:
            return None
        try:
            entry = msgpack.unpackb(data, strict_map_key=False)
            vector = np.frombuffer(entry["v"], dtype="<f4").astype(np.float32)
            if entry["s"] != scope or vector.size != self.dim:
                raise ValueError("another scope's or dimension's entry")
            expires = math.inf if entry["x"] is None else float(entry["x"])
            return vector, expires, (entry["a"], entry["c"], entry["m"])
        except Exception:
            self.bad_entries += 1
            return None

    def get(self, query: Vector, scope: str) -> Plan:
        index = yield from self.current(scope)
        found = None if index is None else index.nearest(query, time.time())
        if found is None or found[1] < self.threshold - SIMILARITY_SLACK:
            self.misses += 1
            return None
        row, similarity = found
        self.hits += 1
        self.similarity.observe(similarity)
        answer, stored_context, metadata = index.payloads[row]
        return Match(answer, min(similarity, 1.0), stored_context, metadata, scope)

    def encode(self, context: Context, vector: Vector, answer: Any, scope: str, ttl_ms: int, metadata: Any) -> bytes:
        if metadata is not None and not isinstance(metadata, dict):
            raise SemanticError(f"metadata must be a dict or None, got {type(metadata).__name__}")
        entry = {
            "s": scope,
            "v": vector.astype("<f4").tobytes(),
            "a": answer,
            "c": context if isinstance(context, str) else list(context),
            "m": metadata,
            "x": time.time() + ttl_ms / 1000 if ttl_ms else None,
        }
        try:
            return msgpack.packb(entry)  # type: ignore[no-any-return]
        except (TypeError, ValueError, OverflowError) as exc:
            raise SemanticError(f"answer, context and metadata must be msgpack-serializable: {exc}") from None

    def keys(self, scope: str, entry_id: str) -> tuple[bytes, bytes, bytes]:
        """The scope's log, its expiry set and the entry's key: the last two carry a hash
        tag of the log's slot, so the three are one script's keys on a cluster too (and
        start with the scope's namespace, so clearing it takes them)."""
        log = self.view(scope).redis_key(LOG)
        companion = log + b"{" + slot_tag(key_slot(log)) + b"}"
        return log, companion + b"exp", companion + b"e:" + entry_id.encode()

    def set(self, text: str, data: bytes, scope: str, ttl_ms: int) -> Plan:
        entry_id = self.entry_id(text)
        yield Change(self.keys(scope, entry_id), entry_id, data, ttl_ms)
        yield Announce(self.view(scope))
        return True

    def delete(self, text: str, scope: str) -> Plan:
        entry_id = self.entry_id(text)
        if not (yield Change(self.keys(scope, entry_id), entry_id, None, 0)):
            return False  # there was no such entry: nothing changed
        yield Announce(self.view(scope))
        return True

    def clear(self, scope: str) -> Plan:
        self.indexes.pop(scope, None)
        return (yield Clear(self.view(scope)))

    # -- figures --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        now = time.time()
        indexes = list(self.indexes.values())
        lookups = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": self.hits / lookups if lookups else None,
            "errors": self.errors,
            "bad_entries": self.bad_entries,
            "scopes": len(indexes),
            "l1_entries": sum(index.live(now) for index in indexes),
            "l1_bytes": sum(index.nbytes for index in indexes),
            "l2_entries": sum(index.l2_ids for index in indexes),
            "similarity": histogram_dict(self.similarity),
        }


_live: weakref.WeakSet[_Front] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for front in list(_live):
        front._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _one(_key: Any) -> int:
    return 1


class Log(NamedTuple):
    """What ReadLog found: the members scored from `since` on, the scope's version, floor and
    generation (0 where absent: no log), and how many entry ids the log holds."""

    scores: dict[str, int]
    version: int
    floor: int
    generation: int
    ids: int


def _log_reply(members: list[tuple[bytes, float]], size: int) -> Log:
    """The range reply holds the version ("%v", the highest score), the generation (a score
    above every version) and the floor when it is past `since`: one command, one snapshot."""
    scores = {member.decode(): int(score) for member, score in members}
    meta = sum(name in scores for name in META)
    return Log(scores, scores.get(VERSION, 0), scores.get(FLOOR, 0), scores.get(GENERATION, 0), size - meta)


class _Front:
    """What both drivers share: construction, input, figures."""

    def __init__(
        self,
        cache: Any,
        embed: Callable[[str], Any] | None = None,
        threshold: float = 0.9,
        *,
        turns: int = 3,
        name: str = "default",
        ttl: float | None = None,
    ) -> None:
        self._engine = _Engine(cache, embed, threshold, turns, name, ttl)
        self._redis = cache.redis
        self._change = self._redis.register_script(CHANGE_SCRIPT)
        self._trim = self._redis.register_script(TRIM_SCRIPT)
        # A lookup refreshes its scope's index: one at a time per scope (a lookup in another
        # scope, or one whose index is current, never waits for Redis; scopes share LOCKS
        # locks, striped, so there is no lock to forget per scope). Writes touch no index.
        self._locks = [self._new_lock() for _ in range(LOCKS)]
        _live.add(self)

    @staticmethod
    def _new_lock() -> Any:
        raise NotImplementedError

    def _after_fork(self) -> None:
        """In a forked child: a parent thread may have held a lock, or been part-way through
        changing an index, when the fork happened; the child starts with new locks and no
        index (its TieredCache's L1 starts empty too, so it would reload them anyway)."""
        self._locks = [self._new_lock() for _ in range(LOCKS)]
        self._engine.indexes = OrderedDict()

    def _lock_of(self, scope: str) -> Any:
        return self._locks[zlib.crc32(scope.encode("utf-8")) % LOCKS]

    @property
    def threshold(self) -> float:
        return self._engine.threshold

    @property
    def name(self) -> str:
        return self._engine.name

    def stats(self) -> dict[str, Any]:
        """hits, misses, hit_ratio, errors (Redis failures), bad_entries (entries in Redis
        that could not be used: another dimension or scope, corrupt), scopes and l1_entries
        (this process's indexes), l1_bytes, l2_entries (ids in the scopes' logs at the last
        look), similarity (histogram of hits)."""
        return self._engine.stats()

    def register_metrics(self, registry: Any = None) -> Any:
        """Export the figures to Prometheus (the default registry if None); returns the
        collector (registry.unregister(collector) removes it)."""
        from prometheus_client import REGISTRY

        collector = SemanticCollector(self)
        (registry if registry is not None else REGISTRY).register(collector)
        return collector

    def _prepare_set(self, context: Context, scope: str, ttl: float | None) -> tuple[str, int]:
        self._engine.check_scope(scope)
        return self._engine.text_of(context), self._engine.ttl_ms(ttl)

    def _failed(self, exc: BaseException) -> None:
        self._engine.errors += 1
        log.warning("tiercache semantic cache %s: Redis failed: %r", self._engine.name, exc)


class SemanticCache(_Front):
    """Answers reused for contexts that mean nearly the same, per scope, over a TieredCache.

    embed: a function of a str returning a vector (any model; default HashedNgrams()).
    threshold: the least cosine similarity that is a match. turns: how many of a
    conversation's last turns are embedded. name: keeps several semantic caches apart on one
    TieredCache. ttl: seconds an entry lives (None: the TieredCache's default_ttl).

    Reads never raise for Redis: a lookup that cannot reach it is a miss (counted in
    stats()["errors"]); set, delete and clear return False."""

    @staticmethod
    def _new_lock() -> Any:
        return threading.Lock()

    def embed(self, context: Context) -> Vector:
        """The unit vector a context is looked up by."""
        text = self._engine.text_of(context)
        return self._engine.unit(self._engine.embed(text), text)

    def get(self, context: Context, scope: str) -> Match | None:
        """The stored answer nearest to context in scope, if similar enough; else None."""
        self._engine.check_scope(scope)
        query = self.embed(context)
        match: Match | None = self._run(self._engine.get(query, scope), None, scope)
        return match

    def set(
        self,
        context: Context,
        answer: Any,
        scope: str,
        ttl: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> bool:
        """Store answer for context in scope (replacing what the same context had); False if
        Redis could not take it."""
        text, ttl_ms = self._prepare_set(context, scope, ttl)
        vector = self._engine.unit(self._engine.embed(text), text)
        data = self._engine.encode(context, vector, answer, scope, ttl_ms, metadata)
        return bool(self._run(self._engine.set(text, data, scope, ttl_ms), False))

    def delete(self, context: Context, scope: str) -> bool:
        """Remove the entry stored for exactly this context; True if there was one."""
        self._engine.check_scope(scope)
        return bool(self._run(self._engine.delete(self._engine.text_of(context), scope), False))

    def clear(self, scope: str) -> bool:
        """Remove every entry of scope, in Redis and in every process."""
        self._engine.check_scope(scope)
        return bool(self._run(self._engine.clear(scope), False))

    def _run(self, plan: Plan, failed: Any, scope: str | None = None) -> Any:
        """Carry out plan (under its scope's lock when scope is given); failed if Redis failed."""
        with contextlib.nullcontext() if scope is None else self._lock_of(scope):
            try:
                request = plan.send(None)
                while True:
                    request = plan.send(self._do(request))
            except StopIteration as done:
                return done.value
            except (RedisError, OSError, CacheUnavailable, RedisReplyError) as exc:
                self._failed(exc)
                return failed
            finally:
                plan.close()  # a plan left part-way undoes what it must (Engine.current)

    def _do(self, request: Request) -> Any:
        redis = self._redis
        if isinstance(request, Touch):
            return request.view.get_or_load(TOKEN, _one)
        if isinstance(request, Announce):
            return request.view.incr(TOKEN, ttl=TOKEN_TTL)
        if isinstance(request, ReadLog):
            with redis.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(request.key, _low(request), "+inf", withscores=True)
                pipe.zcard(request.key)  # for the figures only
                return _log_reply(*pipe.execute())
        if isinstance(request, Fetch):  # one slot (the log's hash tag): plain MGETs on a cluster too
            return [value for batch in _batches(request.keys) for value in redis.mget(batch)]
        if isinstance(request, Change):
            return self._change(keys=list(request.keys), args=_change_args(request))
        if isinstance(request, Trim):  # housekeeping: a failure here fails no lookup
            with contextlib.suppress(RedisError, OSError):
                return self._trim(keys=[request.log], args=[request.entry_id, request.score])
            return 0
        return request.view.clear()  # Clear


class AsyncSemanticCache(_Front):
    """SemanticCache over an AsyncTieredCache: the same methods, awaitable. embed may be a
    plain function or a coroutine function. A set or delete whose caller is cancelled still
    completes (shielded), so no process is left with an index that misses it."""

    @staticmethod
    def _new_lock() -> Any:
        return asyncio.Lock()

    async def embed(self, context: Context) -> Vector:
        """The unit vector a context is looked up by."""
        text = self._engine.text_of(context)
        raw = self._engine.embed(text)
        if inspect.isawaitable(raw):
            raw = await raw
        return self._engine.unit(raw, text)

    async def get(self, context: Context, scope: str) -> Match | None:
        """The stored answer nearest to context in scope, if similar enough; else None."""
        self._engine.check_scope(scope)
        query = await self.embed(context)
        match: Match | None = await self._run(self._engine.get(query, scope), None, scope)
        return match

    async def set(
        self,
        context: Context,
        answer: Any,
        scope: str,
        ttl: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> bool:
        """Store answer for context in scope (replacing what the same context had); False if
        Redis could not take it."""
        text, ttl_ms = self._prepare_set(context, scope, ttl)
        vector = await self.embed(context)
        data = self._engine.encode(context, vector, answer, scope, ttl_ms, metadata)
        return bool(await self._shielded(self._engine.set(text, data, scope, ttl_ms)))

    async def delete(self, context: Context, scope: str) -> bool:
        """Remove the entry stored for exactly this context; True if there was one."""
        self._engine.check_scope(scope)
        return bool(await self._shielded(self._engine.delete(self._engine.text_of(context), scope)))

    async def clear(self, scope: str) -> bool:
        """Remove every entry of scope, in Redis and in every process."""
        self._engine.check_scope(scope)
        return bool(await self._shielded(self._engine.clear(scope)))

    async def _shielded(self, plan: Plan) -> Any:
        return await asyncio.shield(asyncio.ensure_future(self._run(plan, False)))

    async def _run(self, plan: Plan, failed: Any, scope: str | None = None) -> Any:
        """Carry out plan (under its scope's lock when scope is given); failed if Redis failed."""
        async with contextlib.nullcontext() if scope is None else self._lock_of(scope):
            try:
                request = plan.send(None)
                while True:
                    request = plan.send(await self._do(request))
            except StopIteration as done:
                return done.value
            except (RedisError, OSError, CacheUnavailable, RedisReplyError) as exc:
                self._failed(exc)
                return failed
            finally:
                plan.close()  # cancelled or failed part-way: the plan undoes what it must

    async def _do(self, request: Request) -> Any:
        redis = self._redis
        if isinstance(request, Touch):
            return await request.view.get_or_load(TOKEN, _one)
        if isinstance(request, Announce):
            return await request.view.incr(TOKEN, ttl=TOKEN_TTL)
        if isinstance(request, ReadLog):
            async with redis.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(request.key, _low(request), "+inf", withscores=True)
                pipe.zcard(request.key)  # for the figures only
                return _log_reply(*(await pipe.execute()))
        if isinstance(request, Fetch):  # one slot (the log's hash tag): plain MGETs on a cluster too
            return [value for batch in _batches(request.keys) for value in await redis.mget(batch)]
        if isinstance(request, Change):
            return await self._change(keys=list(request.keys), args=_change_args(request))
        if isinstance(request, Trim):  # housekeeping: a failure here fails no lookup
            with contextlib.suppress(RedisError, OSError):
                return await self._trim(keys=[request.log], args=[request.entry_id, request.score])
            return 0
        return await request.view.clear()  # Clear


def _change_args(request: Change) -> list[Any]:
    if request.data is None:
        return [request.entry_id, "del", b"", 0]
    return [request.entry_id, "set", request.data, request.ttl_ms]


def _low(request: ReadLog) -> Any:
    return "-inf" if request.since is None else request.since


def _batches(keys: list[bytes]) -> Iterator[list[bytes]]:
    for start in range(0, len(keys), FETCH_BATCH):
        yield keys[start : start + FETCH_BATCH]


class SemanticCollector:
    """Prometheus figures of one semantic cache, read at scrape time (labels: cache, the
    TieredCache's name; semantic, the semantic cache's)."""

    def __init__(self, front: _Front) -> None:
        self._front = front

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        stats = self._front.stats()
        labels = ["cache", "semantic"]
        values = [self._front._engine.cache.name, self._front.name]
        requests = CounterMetricFamily(
            "tiercache_semantic_requests",
            "Semantic lookups by result: hit (similar enough) or miss.",
            labels=[*labels, "result"],
        )
        requests.add_metric([*values, "hit"], stats["hits"])
        requests.add_metric([*values, "miss"], stats["misses"])
        errors = CounterMetricFamily(
            "tiercache_semantic_errors", "Semantic cache calls that Redis failed.", labels=labels
        )
        errors.add_metric(values, stats["errors"])
        similarity = HistogramMetricFamily(
            "tiercache_semantic_similarity", "Cosine similarity of the entries that answered hits.", labels=labels
        )
        histogram = stats["similarity"]
        similarity.add_metric(
            values,
            [
                ("+Inf" if bound == math.inf else repr(float(bound)), count)
                for bound, count in histogram["buckets"].items()
            ],
            histogram["sum"],
        )
        entries = GaugeMetricFamily(
            "tiercache_semantic_entries",
            "Entries by tier: l1, in this process's indexes (live); l2, ids in the scopes' logs in Redis "
            "at this process's last look.",
            labels=[*labels, "tier"],
        )
        entries.add_metric([*values, "l1"], stats["l1_entries"])
        entries.add_metric([*values, "l2"], stats["l2_entries"])
        size = GaugeMetricFamily("tiercache_semantic_index_bytes", "Memory of this process's indexes.", labels=labels)
        size.add_metric(values, stats["l1_bytes"])
        yield from (requests, errors, similarity, entries, size)
