"""The sans-I/O core of tiercache: every rule of the cache, and no networking code at all.

Nothing in this package imports a Redis client. The drivers (cache.py for blocking
redis-py, aio.py for redis.asyncio) run its plans and do the I/O they ask for::

    get(k) ─► L1 (C: TieredFront.get) ──── hit ─────────────────────────────────────► value
               │ miss
               ▼
              plans.get: token = guard.begin_read()   (fill guard: what happens to k from now?)
              yield Get(k) ─ driver: RedisCall ── breaker open / no answer ─► CacheUnavailable
               │ bytes / nil                        (counted, logged once a burst) ─► default
               ▼
              decode ── corrupt ─► counted miss (never raised)
              fill(k, value, deadline, token) ─► L1, unless k was invalidated, flushed or
               │                                 written since the token (counted as dropped)
               ▼
              value ; on a miss with a loader: yield Flight(k, plans.load) (single-flight)
                      ─► yield Call(loader) ─► yield Set(k, NX PX) ─► fill

    set(k, v) ─► encode (TypeError here: nothing written) ─► yield Call(writer) ─► token =
                 guard.begin_writes(k) ─► yield Pipeline(SET PX, PUBLISH) ─► guard.end_writes:
                 L1 set if the write landed and no other write overlapped, else drop
    delete(k) ─► yield Call(writer, DELETED) ─► begin_writes, drop L1 ─► DEL + PUBLISH ─► drop

    subscriber (invalidation.subscribe, a plan too) ─► messages of other origins:
                 guard.invalidate(keys) ; lost / silent / gap ─► guard.shut or flush L1

The modules, one concern each:

    requests.py      the closed vocabulary a plan yields (Get, Set, Pipeline, Call, Flight...)
                     and the subscriber's (Subscribe, Receive, Ping, ...)
    plans.py         every cache operation, written once for both drivers
    guard.py         FillGuard: the one owner of every L1 change (invariant 2)
    lease.py         the fleet-wide load lease: scripts, tokens (invariant 10)
    repair.py        write-throughs Redis missed, held out of L1 until repaired (invariant 9)
    invalidation.py  the bus: message format, Publisher, SubscriberState, the subscriber's loop
    resilience.py    circuit breaker, burst log, RedisCall, client defaults (invariant 5)
    stats.py         counters and histograms of the Redis tier, the stats() snapshot
    shared.py        Shared (one cache's state, for all its views) and Scope (one view)

Import order has no cycles: requests, lease <- guard, resilience, stats <- repair,
invalidation <- shared <- plans.
"""
