# LocalCache, the L1 itself: its C data structure, the LRU and S3-FIFO policies, per-entry
# TTL, and the hooks that show its keys and values to the garbage collector. Included by
# _local.pyx, before the other includes.
#
# Its own file because it is most of the module and the only part that owns C memory; the
# other includes reach into it only through _get, _now, _store, _release_pending and _timer.
#
# Data structure
# --------------
#   entries[]  an array of 40-byte entry_t (key, value, expiry, 32-bit hash, prev/next slot
#              numbers, S3-FIFO frequency and queue). Freed slots form a LIFO free list
#              threaded through `next`; the array grows by doubling up to maxsize.
#   table[]    open addressing with linear probing over uint32 slot numbers (0 = empty,
#              n = entries[n - 1]), load <= 1/2, backward-shift deletion so no tombstones
#              accumulate under churn. 40 + ~8 bytes per entry in all, no per-entry objects.
#   queues     doubly linked lists through entries: queue 0 is the LRU list or S3-FIFO's
#              small FIFO, queue 1 is S3-FIFO's main FIFO. Insert at head, evict at tail.
#   ghost      S3-FIFO only: a ring of 32-bit fingerprints of keys evicted from small (as many
#              as the main queue holds), with an open-addressing multiset over them at load
#              3/4; grown by doubling as evictions fill it.
#
# Concurrency and re-entry. Python code runs wherever the C code calls into the interpreter:
# a key's __hash__ or __eq__, the timer, a decref (a __del__), and any allocation of a Python
# object (a tuple, a list: the garbage collector may run then, and with it any finalizer or
# weakref callback, which may also hand the GIL to another thread). That code may do anything
# to this cache: clear it, fill it, re-initialise it. The rule (invariant 12 in DESIGN.md):
#
#   No entry pointer, slot number or queue position survives a call that can run Python
#   code, unless `version` is re-checked after the call (and the work restarts if it moved).
#
# How each kind of call keeps it:
#   __hash__     keys are hashed before anything is looked up or changed.
#   the timer    read before the probe: _now() comes first in every method that needs it.
#   __eq__       _find holds a reference to the stored key while comparing, re-checks
#                `version` afterwards and restarts the probe if the table changed.
#   decref       objects released mid-update (evicted, replaced, expired) go to `pending`
#                and are decref'd by _release_pending once the structure is consistent.
#                `pending` is grown (_reserve) before an update starts, never during one, so
#                a failed allocation cannot force a decref mid-update.
#   allocation   walks that build Python objects run in two phases (_collect): take new
#                references into a C array while no Python code can run, then build. popitem
#                takes its references, removes the entry, and only then builds its tuple.
#
# An object made by __new__ alone is a working default cache (__cinit__ configures it), and
# __init__ on a live cache resets it: the old entries are dropped, the counters zeroed.

cdef enum:
    LRU = 0
    S3FIFO = 1
    SMALL = 0
    MAIN = 1
    NIL = -1
    MAX_FREQ = 3
    SWEEP_STEP = 4  # keep equal to SWEEP_STEP in tiercache/_local_py.py
    MIN_ENTRIES = 16
    MIN_TABLE = 32
    GHOST_MIN = 1024
    # Most releases one write can queue: the sweep's SWEEP_STEP entries and one eviction
    # (a key and a value each), and a replaced value.
    PENDING_RESERVE = 2 * SWEEP_STEP + 2 + 1

ctypedef struct entry_t:
    PyObject *key           # NULL: the slot is free
    PyObject *value
    double expires          # absolute time on the cache's timer; INFINITY = never
    uint32_t hash           # fingerprint() of the key's Python hash
    int32_t prev
    int32_t next
    uint8_t freq
    uint8_t queue


cdef class LocalCache:
    """In-process LRU or S3-FIFO cache with per-entry TTL (compiled implementation).

    Subclassable as cachetools' caches are: a subclass's __missing__ answers __getitem__ for
    a missing key, and an overridden popitem() is what a write calls to make room.
    """

    cdef entry_t *entries
    cdef Py_ssize_t capacity        # entries allocated
    cdef Py_ssize_t top             # entries[0:top] have been handed out at least once
    cdef int32_t free_head
    cdef uint32_t *table
    cdef size_t table_mask
    cdef Py_ssize_t count
    cdef Py_ssize_t _maxsize        # math.inf is kept as MAX_MAXSIZE with _unbounded set
    cdef bint _unbounded
    cdef bint _popitem_hook         # a subclass overrides popitem(): writes call it for room
    cdef double _default_ttl
    cdef int _policy
    cdef int32_t head[2]
    cdef int32_t tail[2]
    cdef Py_ssize_t qlen[2]
    cdef Py_ssize_t small_cap
    cdef uint32_t *ghost_ring
    cdef Py_ssize_t ghost_len
    cdef Py_ssize_t ghost_pos
    cdef Py_ssize_t ghost_cap
    cdef Py_ssize_t ghost_alloc     # ring entries allocated (grows to ghost_cap as it fills)
    cdef uint32_t *ghost_table
    cdef size_t ghost_size
    cdef object _timer
    cdef object __weakref__
    cdef bint has_ttl
    cdef Py_ssize_t sweep_pos
    cdef uint64_t version
    cdef PyObject **pending
    cdef Py_ssize_t npending
    cdef Py_ssize_t pending_alloc
    cdef readonly unsigned long long hits, misses, sets, deletes, evictions, expirations

    def __cinit__(self):
        self.free_head = NIL
        self.head[0] = self.head[1] = NIL
        self.tail[0] = self.tail[1] = NIL
        self._configure(10_000, None, "lru", None)  # so LocalCache.__new__(LocalCache) works
        cls = type(self)
        self._popitem_hook = cls is not LocalCache and cls.popitem is not LocalCache.popitem

    def __init__(self, maxsize=10_000, ttl=None, policy="lru", timer=None):
        self._configure(maxsize, ttl, policy, timer)
        self.hits = self.misses = self.sets = self.deletes = 0
        self.evictions = self.expirations = 0
        self._drop_storage()  # __init__ on a live cache starts it afresh
        self._release_pending()

    @cython.final
    cdef int _configure(self, maxsize, ttl, policy, timer) except -1:
        """Check every argument, then set them all: a bad one changes nothing."""
        cdef object checked = check_maxsize(maxsize)
        cdef double default_ttl = default_ttl_seconds(ttl)
        cdef int policy_number = check_policy(policy)
        if timer is not None and not callable(timer):
            raise TypeError(
                f"timer must be a callable returning seconds, got {type(timer).__name__}")
        self._unbounded = checked == INFINITY
        self._maxsize = slot_limit(checked)
        self._default_ttl = default_ttl
        self._policy = policy_number
        self._timer = timer
        self.small_cap = max(1, self._maxsize // 10)
        self.ghost_cap = max(1, self._maxsize - self.small_cap)
        self.has_ttl = self._default_ttl != INFINITY
        return 0

    def __dealloc__(self):
        self._drop_storage()
        self._release_pending()
        PyMem_Free(self.pending)

    # -- memory ---------------------------------------------------------------------------

    @cython.final
    cdef void _drop_storage(self) noexcept:
        """Free the arrays, queueing every key and value for release."""
        cdef Py_ssize_t i
        cdef entry_t *entries = self.entries
        cdef Py_ssize_t top = self.top
        self.entries = NULL
        self.capacity = self.top = self.count = 0
        self.free_head = NIL
        PyMem_Free(self.table)
        self.table = NULL
        self.table_mask = 0
        self.head[0] = self.head[1] = NIL
        self.tail[0] = self.tail[1] = NIL
        self.qlen[0] = self.qlen[1] = 0
        self.sweep_pos = 0
        PyMem_Free(self.ghost_ring)
        PyMem_Free(self.ghost_table)
        self.ghost_ring = NULL
        self.ghost_table = NULL
        self.ghost_len = self.ghost_pos = self.ghost_alloc = 0
        self.ghost_size = 0
        self.version += 1
        # Released last slot first (the order the pure twin's list of slots is freed in).
        for i in range(top - 1, -1, -1):
            if entries[i].key != NULL:
                Py_XDECREF(entries[i].key)
                Py_XDECREF(entries[i].value)
        PyMem_Free(entries)

    @cython.final
    cdef inline int _reserve(self, Py_ssize_t extra) except -1:
        """Make room in `pending` for `extra` more releases, before an update starts."""
        cdef PyObject **grown
        cdef Py_ssize_t size
        if self.npending + extra <= self.pending_alloc:
            return 0
        size = max(PENDING_RESERVE, self.pending_alloc * 2, self.npending + extra)
        grown = <PyObject **>PyMem_Realloc(self.pending, size * sizeof(PyObject *))
        if grown == NULL:
            raise MemoryError("LocalCache could not grow its release queue")
        self.pending = grown
        self.pending_alloc = size
        return 0

    @cython.final
    cdef inline void _pend(self, PyObject *obj) noexcept:
        """Queue a reference to release once the structure is consistent (room reserved)."""
        self.pending[self.npending] = obj
        self.npending += 1

    @cython.final
    cdef void _release_pending(self) noexcept:
        # A __del__ run from here may re-enter and pend more; take one at a time.
        cdef PyObject *obj
        while self.npending:
            self.npending -= 1
            obj = self.pending[self.npending]
            Py_DECREF(<object>obj)

    @cython.final
    cdef int _grow_entries(self) except -1:
        cdef Py_ssize_t size = min(max(MIN_ENTRIES, self.capacity * 2), self._maxsize)
        cdef entry_t *grown = <entry_t *>PyMem_Realloc(self.entries, size * sizeof(entry_t))
        if grown == NULL:
            raise MemoryError("LocalCache could not grow its entry array")
        self.entries = grown
        self.capacity = size
        return 0

    @cython.final
    cdef int _grow_table(self, Py_ssize_t wanted) except -1:
        """Make the table hold `wanted` entries at load <= 1/2 (rehash from entries)."""
        cdef size_t size = MIN_TABLE
        cdef size_t mask, pos
        cdef Py_ssize_t i
        cdef uint32_t *table
        while size < <size_t>wanted * 2:
            size *= 2
        if self.table != NULL and size <= self.table_mask + 1:
            return 0
        table = <uint32_t *>PyMem_Malloc(size * sizeof(uint32_t))
        if table == NULL:
            raise MemoryError("LocalCache could not grow its hash table")
        memset(table, 0, size * sizeof(uint32_t))
        mask = size - 1
        for i in range(self.top):
            if self.entries[i].key != NULL:
                pos = self.entries[i].hash & mask
                while table[pos]:
                    pos = (pos + 1) & mask
                table[pos] = <uint32_t>(i + 1)
        PyMem_Free(self.table)
        self.table = table
        self.table_mask = mask
        return 0

    # -- hash table -------------------------------------------------------------------------

    @cython.final
    cdef inline Py_ssize_t _find(self, object key, uint32_t fp) except -2:
        """Slot of key, or -1. May run the key's __eq__; restarts if that changed the table."""
        cdef size_t pos
        cdef uint32_t slot
        cdef PyObject *stored
        cdef uint64_t version
        cdef int equal
        cdef object held
        if self.table == NULL:
            return -1
        pos = fp & self.table_mask
        while True:
            slot = self.table[pos]
            if slot == 0:
                return -1
            if self.entries[slot - 1].hash == fp:
                stored = self.entries[slot - 1].key
                if stored == <PyObject *>key:
                    return slot - 1
                version = self.version
                held = <object>stored  # a reference of our own: __eq__ may drop the entry's
                equal = PyObject_RichCompareBool(held, key, Py_EQ)
                held = None
                if self.version != version:
                    if self.table == NULL:
                        return -1
                    pos = fp & self.table_mask
                    continue
                if equal:
                    return slot - 1
            pos = (pos + 1) & self.table_mask

    @cython.final
    cdef void _table_delete(self, Py_ssize_t idx) noexcept:
        cdef size_t mask = self.table_mask
        cdef size_t hole = self.entries[idx].hash & mask
        cdef size_t pos, home
        cdef uint32_t *table = self.table
        while table[hole] != <uint32_t>(idx + 1):
            hole = (hole + 1) & mask
        pos = hole
        while True:
            pos = (pos + 1) & mask
            if table[pos] == 0:
                break
            home = self.entries[table[pos] - 1].hash & mask
            # The entry at pos may fill the hole unless its home lies in (hole, pos].
            if (hole < pos and hole < home <= pos) or (hole > pos and (home > hole or home <= pos)):
                continue
            table[hole] = table[pos]
            hole = pos
        table[hole] = 0

    # -- queues -------------------------------------------------------------------------------

    @cython.final
    cdef inline void _link_head(self, int32_t idx, int queue) noexcept:
        cdef entry_t *e = &self.entries[idx]
        e.queue = <uint8_t>queue
        e.prev = NIL
        e.next = self.head[queue]
        if e.next != NIL:
            self.entries[e.next].prev = idx
        else:
            self.tail[queue] = idx
        self.head[queue] = idx
        self.qlen[queue] += 1

    @cython.final
    cdef inline void _unlink(self, int32_t idx) noexcept:
        cdef entry_t *e = &self.entries[idx]
        cdef int queue = e.queue
        if e.prev != NIL:
            self.entries[e.prev].next = e.next
        else:
            self.head[queue] = e.next
        if e.next != NIL:
            self.entries[e.next].prev = e.prev
        else:
            self.tail[queue] = e.prev
        self.qlen[queue] -= 1

    @cython.final
    cdef inline void _touch(self, int32_t idx) noexcept:
        cdef entry_t *e
        if self._policy == LRU:
            if self.head[SMALL] != idx:
                self._unlink(idx)
                self._link_head(idx, SMALL)
        else:
            e = &self.entries[idx]
            if e.freq < MAX_FREQ:
                e.freq += 1

    # -- ghost (S3-FIFO) ------------------------------------------------------------------
    # The ghost is only written by evictions from small, and then it fills to ghost_cap and
    # stays there. A full bounded cache allocates it whole on its first eviction (ghost_cap is
    # below its size); a cache that evicts while far from full (unbounded, or popitem() on a
    # huge one) grows the ring by doubling instead (write position == length while it fills,
    # so growing keeps its order), rebuilding the table each time. Its table is probed
    # on inserts only, never on a hit, so it runs at load 3/4 with any size
    # (home = fp * size >> 32).

    @cython.final
    cdef inline size_t _ghost_home(self, uint32_t fp) noexcept:
        return <size_t>((<uint64_t>fp * self.ghost_size) >> 32)

    @cython.final
    cdef inline size_t _ghost_next(self, size_t pos) noexcept:
        pos += 1
        return 0 if pos == self.ghost_size else pos

    @cython.final
    cdef inline bint _ghost_has(self, uint32_t fp) noexcept:
        cdef size_t pos
        if self.ghost_table == NULL:
            return False
        pos = self._ghost_home(fp)
        while self.ghost_table[pos]:
            if self.ghost_table[pos] == fp:
                return True
            pos = self._ghost_next(pos)
        return False

    @cython.final
    cdef void _ghost_table_drop(self, uint32_t fp) noexcept:
        cdef uint32_t *table = self.ghost_table
        cdef size_t hole = self._ghost_home(fp)
        cdef size_t pos, home
        while table[hole] != fp:
            hole = self._ghost_next(hole)
        pos = hole
        while True:
            pos = self._ghost_next(pos)
            if table[pos] == 0:
                break
            home = self._ghost_home(table[pos])
            if (hole < pos and hole < home <= pos) or (hole > pos and (home > hole or home <= pos)):
                continue
            table[hole] = table[pos]
            hole = pos
        table[hole] = 0

    @cython.final
    cdef int _ghost_grow(self) except -1:
        """Double the ring (at most ghost_cap; at once to the cache's size, so a full bounded
        cache allocates it whole on its first eviction) and rebuild the table for it."""
        cdef Py_ssize_t alloc = min(self.ghost_cap, max(GHOST_MIN, self.ghost_alloc * 2, self.count))
        cdef size_t size = <size_t>(alloc + alloc // 3 + 1)
        cdef uint32_t *ring = <uint32_t *>PyMem_Realloc(self.ghost_ring, alloc * sizeof(uint32_t))
        cdef uint32_t *table
        cdef Py_ssize_t i
        cdef size_t pos
        if ring == NULL:
            raise MemoryError("LocalCache could not grow its ghost queue")
        self.ghost_ring = ring
        table = <uint32_t *>PyMem_Malloc(size * sizeof(uint32_t))
        if table == NULL:
            raise MemoryError("LocalCache could not grow its ghost queue")
        memset(table, 0, size * sizeof(uint32_t))
        PyMem_Free(self.ghost_table)
        self.ghost_table = table
        self.ghost_size = size
        self.ghost_alloc = alloc
        for i in range(self.ghost_len):
            pos = self._ghost_home(ring[i])
            while table[pos]:
                pos = self._ghost_next(pos)
            table[pos] = ring[i]
        return 0

    @cython.final
    cdef int _ghost_add(self, uint32_t fp) except -1:
        cdef size_t pos
        if self.ghost_len < self.ghost_cap:
            if self.ghost_len == self.ghost_alloc:
                self._ghost_grow()
            self.ghost_len += 1
        else:
            self._ghost_table_drop(self.ghost_ring[self.ghost_pos])
        self.ghost_ring[self.ghost_pos] = fp
        self.ghost_pos = (self.ghost_pos + 1) % self.ghost_cap
        pos = self._ghost_home(fp)
        while self.ghost_table[pos]:
            pos = self._ghost_next(pos)
        self.ghost_table[pos] = fp
        return 0

    # -- storage --------------------------------------------------------------------------

    @cython.final
    cdef int _remove(self, Py_ssize_t idx) except -1:
        """Unlink and free the slot; its key and value are released later."""
        cdef entry_t *e = &self.entries[idx]
        self._unlink(<int32_t>idx)
        self._table_delete(idx)
        self._pend(e.key)
        self._pend(e.value)
        e.key = NULL
        e.value = NULL
        e.next = self.free_head
        self.free_head = <int32_t>idx
        self.count -= 1
        self.version += 1
        return 0

    @cython.final
    cdef int32_t _victim(self, double now) noexcept:
        """The entry the policy evicts next (NIL if empty): LRU's tail; for S3-FIFO, after
        giving entries read since they were queued another lap (which is part of evicting).
        An expired entry met on the way is the victim as it is."""
        cdef int32_t idx
        cdef entry_t *e
        cdef bint small_turn
        if self.count == 0:
            return NIL
        if self._policy == LRU:
            return self.tail[SMALL]
        while True:
            small_turn = self.qlen[SMALL] > 0 and (
                self.qlen[SMALL] >= self.small_cap or self.qlen[MAIN] == 0)
            idx = self.tail[SMALL if small_turn else MAIN]
            e = &self.entries[idx]
            if e.expires <= now or e.freq == 0:
                return idx
            self._unlink(idx)
            e.freq = 0 if small_turn else e.freq - 1
            self._link_head(idx, MAIN)

    @cython.final
    cdef int _evict(self, int32_t idx, double now) except -1:
        """Remove the victim, counting an expiry or an eviction (S3-FIFO remembers a live
        entry evicted from small in its ghost). Room in `pending` is the caller's."""
        cdef entry_t *e = &self.entries[idx]
        if e.expires <= now:
            self.expirations += 1
        else:
            if self._policy == S3FIFO and e.queue == SMALL:
                self._ghost_add(e.hash)
            self.evictions += 1
        return self._remove(idx)

    @cython.final
    cdef int _sweep(self, double now) except -1:
        cdef int step
        for step in range(SWEEP_STEP):
            if self.top == 0:
                return 0
            if self.sweep_pos >= self.top:
                self.sweep_pos = 0
            if self.entries[self.sweep_pos].key != NULL and self.entries[self.sweep_pos].expires <= now:
                self._remove(self.sweep_pos)
                self.expirations += 1
            self.sweep_pos += 1
        return 0

    @cython.final
    cdef int _store(self, object key, uint32_t fp, object value, double expires, double now) except -1:
        cdef Py_ssize_t idx
        cdef entry_t *e
        self._reserve(PENDING_RESERVE)
        if expires != INFINITY:
            self.has_ttl = True
        if self.has_ttl:
            self._sweep(now)  # first, so the slots it frees can take this entry
        idx = self._find(key, fp)  # may run __eq__; nothing below does
        self._reserve(3)  # other threads may have pended while __eq__ ran: room again
        if idx >= 0:
            e = &self.entries[idx]
            self._pend(e.value)
            Py_INCREF(value)
            e.value = <PyObject *>value
            e.expires = expires
            self._touch(<int32_t>idx)
        elif self._maxsize == 0:
            self.evictions += 1  # a cache of size 0 stores nothing: the entry goes at once
        else:
            self._insert(key, fp, value, expires, now,
                         MAIN if self._policy == S3FIFO and self._ghost_has(fp) else SMALL, 0)
        self.sets += 1
        return 0

    @cython.final
    cdef Py_ssize_t _insert(self, object key, uint32_t fp, object value, double expires,
                            double now, int queue, uint8_t freq) except -1:
        """Put a key known to be absent at the head of queue, evicting first if full."""
        cdef Py_ssize_t idx
        cdef entry_t *e
        # Allocate before evicting so a MemoryError leaves the cache as it was.
        if self.count < self._maxsize:
            if self.free_head == NIL and self.top == self.capacity:
                self._grow_entries()
            if self.table == NULL or <size_t>(self.count + 1) * 2 > self.table_mask + 1:
                self._grow_table(self.count + 1)
        else:
            self._evict(self._victim(now), now)
        if self.free_head != NIL:
            idx = self.free_head
            self.free_head = self.entries[idx].next
        else:
            idx = self.top
            self.top += 1
        e = &self.entries[idx]
        Py_INCREF(key)
        Py_INCREF(value)
        e.key = <PyObject *>key
        e.value = <PyObject *>value
        e.expires = expires
        e.hash = fp
        e.freq = freq
        self._table_put(idx)
        self._link_head(<int32_t>idx, queue)
        self.count += 1
        self.version += 1
        return idx

    @cython.final
    cdef inline void _table_put(self, Py_ssize_t idx) noexcept:
        cdef size_t pos = self.entries[idx].hash & self.table_mask
        while self.table[pos]:
            pos = (pos + 1) & self.table_mask
        self.table[pos] = <uint32_t>(idx + 1)

    # -- time ----------------------------------------------------------------------------------

    @cython.final
    cdef double _now(self) except? -1.0:
        cdef double now
        if self._timer is None:
            return monotonic()
        now = float(self._timer())
        if now != now:  # NaN would compare as "not expired" everywhere, and means "unread" here
            raise ValueError("timer returned NaN; it must return seconds as a number")
        return now

    @cython.final
    cdef double _expires_at(self, object ttl, double now) except? -1.0:
        cdef double seconds
        if ttl is None:
            seconds = self._default_ttl
        elif type(ttl) is float and <double>ttl > 0:  # NaN fails the test and is refused below
            seconds = <double>ttl
        else:
            seconds = ttl_seconds(ttl)
        if seconds == INFINITY:
            return INFINITY
        if self._timer is None and seconds > CLOCK_SLACK:
            return now + seconds - CLOCK_SLACK
        return now + seconds  # a ttl below the coarse clock's tick lives about one tick

    @cython.final
    cdef inline double _write_clock(self, object ttl) except? -1.0:
        """The time a write needs: only read when an expiry or the sweep will use it."""
        if ttl is not None or self.has_ttl:
            return self._now()
        return NAN

    @cython.final
    cdef Py_ssize_t _live(self, object key, double now) except -2:
        """Slot of key if present and not expired; no stats, no reordering. now is NaN when
        the caller has not read the clock: it is then read here, before the probe."""
        cdef uint32_t fp = fingerprint(PyObject_Hash(key))
        cdef Py_ssize_t idx
        if now != now and self.has_ttl:
            now = self._now()
        idx = self._find(key, fp)
        if idx < 0 or self.entries[idx].expires <= now:
            return -1
        return idx

    # -- reads ---------------------------------------------------------------------------------

    @cython.final
    cdef inline object _get(self, object key, object default):
        cdef Py_hash_t key_hash = PyObject_Hash(key)
        cdef double now = NAN
        cdef Py_ssize_t idx
        cdef entry_t *e
        if self._timer is not None:
            now = self._now()  # before the probe: a Python timer may change the table
        idx = self._find(key, fingerprint(key_hash))
        if idx >= 0:
            e = &self.entries[idx]
            if e.expires != INFINITY:
                if now != now:
                    now = monotonic()
                if now >= e.expires:
                    self._reserve(2)
                    self._remove(idx)
                    self.expirations += 1
                    self.misses += 1
                    self._release_pending()
                    return default
            self.hits += 1
            self._touch(<int32_t>idx)
            return <object>e.value
        self.misses += 1
        return default

    def get(self, key, default=None):
        """The value for key, or default when it is absent or expired."""
        return self._get(key, default)

    def __getitem__(self, key):
        value = self._get(key, _MISSING)
        if value is _MISSING:
            if type(self) is not LocalCache:
                return _subclass_missing(self, key)
            raise KeyError(key)
        return value

    def __contains__(self, key):
        return self._live(key, NAN) >= 0

    def get_many(self, keys):
        """A dict of the keys that are present and live, with their values."""
        found = {}
        for key in keys:
            value = self._get(key, _MISSING)
            if value is not _MISSING:
                found[key] = value
        return found

    def peek(self, key, default=None):
        """The value for key without counting a hit or changing its eviction order."""
        cdef Py_ssize_t idx = self._live(key, NAN)
        return default if idx < 0 else <object>self.entries[idx].value

    def ttl(self, key):
        """Seconds key has left; math.inf if it never expires; None if it is absent."""
        cdef double now = self._now()
        cdef Py_ssize_t idx = self._live(key, now)
        if idx < 0:
            return None
        if self.entries[idx].expires == INFINITY:
            return INFINITY
        return self.entries[idx].expires - now

    def __len__(self):
        """Entries held, counting expired ones not yet reclaimed (as cachetools does);
        evict_expired() reclaims them. Iteration yields live entries only."""
        return self.count

    @property
    def currsize(self):
        """len(cache): cachetools' name for the current size (every entry weighs 1)."""
        return self.count

    @staticmethod
    def getsizeof(value):
        """cachetools' size of one value: always 1 (the cache is bounded in entries)."""
        return 1

    @cython.final
    cdef inline int32_t _oldest(self) noexcept:
        """The first entry in eviction order, live or not; NIL if empty."""
        return self.tail[SMALL] if self.tail[SMALL] != NIL else self.tail[MAIN]

    @cython.final
    cdef inline int32_t _after(self, int32_t idx) noexcept:
        """The entry after idx in eviction order: the small (or LRU) queue tail to head,
        then main tail to head; NIL at the end."""
        cdef entry_t *e = &self.entries[idx]
        if e.prev != NIL:
            return e.prev
        return self.tail[MAIN] if e.queue == SMALL else NIL

    @cython.final
    cdef Py_ssize_t _collect(self, PyObject **refs, double now, double *expiries,
                             uint8_t *policy_state) noexcept:
        """Phase one of a walk: a new reference to the key and value of every entry not
        expired at now, in eviction order, into refs (room for 2 * count), and when asked
        (not NULL) its expiry and its S3-FIFO frequency and queue. No Python code runs here,
        so the walk cannot be changed under it. Returns the number of entries."""
        cdef int32_t idx = self._oldest()
        cdef Py_ssize_t n = 0
        cdef entry_t *e
        while idx != NIL:
            e = &self.entries[idx]
            if not e.expires <= now:
                Py_XINCREF(e.key)
                Py_XINCREF(e.value)
                refs[2 * n] = e.key
                refs[2 * n + 1] = e.value
                if expiries != NULL:
                    expiries[n] = e.expires
                    policy_state[2 * n] = e.freq
                    policy_state[2 * n + 1] = e.queue
                n += 1
            idx = self._after(idx)
        return n

    cdef PyObject **_refs_buffer(self) except NULL:
        cdef PyObject **refs = <PyObject **>PyMem_Malloc(max(1, 2 * self.count) * sizeof(PyObject *))
        if refs == NULL:
            raise MemoryError("LocalCache could not allocate a snapshot")
        return refs

    def _snapshot(self, int what):
        """Live entries in eviction order: keys (0), values (1) or (key, value) pairs (2).
        Phase two of the walk: the Python objects are built from the collected references,
        so a collection (and any finalizer) that runs while building cannot hurt the walk."""
        cdef double now = self._now() if self.has_ttl else NAN
        cdef PyObject **refs = self._refs_buffer()
        cdef Py_ssize_t n = self._collect(refs, now, NULL, NULL)
        cdef Py_ssize_t i
        cdef list out = []
        try:
            for i in range(n):
                if what == 0:
                    out.append(<object>refs[2 * i])
                elif what == 1:
                    out.append(<object>refs[2 * i + 1])
                else:
                    out.append((<object>refs[2 * i], <object>refs[2 * i + 1]))
        finally:
            _release_refs(refs, 2 * n)
        return out

    def __iter__(self):
        """Live keys, least recently used (next to be evicted) first, over a snapshot."""
        return iter(self._snapshot(0))

    def __reversed__(self):
        """Live keys, most recently used first, over a snapshot."""
        return reversed(self._snapshot(0))

    def keys(self):
        """A set-like view of the live keys, in eviction order (each iteration a snapshot)."""
        return CacheKeysView(self)

    def values(self):
        """A view of the live values, in eviction order (each iteration a snapshot)."""
        return CacheValuesView(self)

    def items(self):
        """A set-like view of the live (key, value) pairs, in eviction order."""
        return CacheItemsView(self)

    def __eq__(self, other):
        """Equal to any mapping with the same live keys and values (as a dict is)."""
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # a mutable mapping, like dict and cachetools' caches

    @classmethod
    def __class_getitem__(cls, item):
        """LocalCache[str, int] for annotations."""
        return GenericAlias(cls, item)

    # -- writes ------------------------------------------------------------------------------

    def set(self, key, value, ttl=None):
        """Store value under key; ttl in seconds, None for the cache default, inf for never."""
        cdef double now = self._write_clock(ttl)
        cdef double expires = self._expires_at(ttl, now)
        cdef uint32_t fp = fingerprint(PyObject_Hash(key))
        try:
            if self._popitem_hook:
                self._make_room(key, fp)
            self._store(key, fp, value, expires, now)
        finally:
            self._release_pending()

    @cython.final
    cdef int _make_room(self, object key, uint32_t fp) except -1:
        """For a subclass that overrides popitem(): call it until a new key fits, as
        cachetools' __setitem__ does (an override that frees nothing is left to the policy)."""
        cdef Py_ssize_t before
        while self._maxsize and self.count >= self._maxsize and self._find(key, fp) < 0:
            before = self.count
            try:
                self.popitem()
            except KeyError:  # only expired entries were left, and popitem reclaimed them
                break
            if self.count >= before:
                break
        return 0

    def __setitem__(self, key, value):
        self.set(key, value)

    def __delitem__(self, key):
        if not self.delete(key):
            raise KeyError(key)

    def set_many(self, mapping, ttl=None):
        """Store every pair; nothing is stored if any key is unhashable or ttl is invalid."""
        cdef list pairs = list(mapping.items() if isinstance(mapping, Mapping) else mapping)
        cdef double now = self._write_clock(ttl)
        cdef double expires = self._expires_at(ttl, now)
        cdef list fps = [fingerprint(PyObject_Hash(key)) for key, _ in pairs]
        try:
            for (key, value), fp in zip(pairs, fps):
                if self._popitem_hook:
                    self._make_room(key, fp)
                self._store(key, fp, value, expires, now)
        finally:
            self._release_pending()

    def update(self, other=(), /, **kwargs):
        """Like dict.update: every pair is stored with the cache's default ttl."""
        self.set_many(other)
        if kwargs:
            self.set_many(kwargs)

    def setdefault(self, key, default=None):
        """The live value for key; if absent, store default and return it."""
        value = self._get(key, _MISSING)
        if value is _MISSING:
            self.set(key, default)
            return default
        return value

    def delete(self, key):
        """Remove key; True if a live entry was removed."""
        cdef double now = self._now() if self.has_ttl else NAN
        cdef Py_ssize_t idx = self._find(key, fingerprint(PyObject_Hash(key)))
        cdef bint live
        if idx < 0:
            return False
        live = not self.entries[idx].expires <= now
        self._reserve(2)
        try:
            self._remove(idx)
            if live:
                self.deletes += 1
            else:
                self.expirations += 1
        finally:
            self._release_pending()
        return live

    def delete_many(self, keys):
        """Remove every key given; the number of live entries removed."""
        keys = list(keys)
        for key in keys:
            PyObject_Hash(key)
        return sum([self.delete(key) for key in keys])

    def pop(self, key, default=_MISSING):
        """Remove key and return its value (counts as a get and a delete)."""
        value = self._get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        self.delete(key)
        return value

    def popitem(self):
        """Evict and return the entry the policy would evict next (counted as an eviction;
        S3-FIFO first gives recently read entries another lap, as an eviction does).
        Expired entries met on the way are reclaimed. KeyError if nothing live is left."""
        cdef double now = self._now() if self.has_ttl else NAN
        cdef int32_t idx
        cdef object key, value
        try:
            while True:
                idx = self._victim(now)
                if idx == NIL:
                    raise KeyError("popitem(): cache is empty")
                self._reserve(2)
                if self.entries[idx].expires <= now:
                    self._evict(idx, now)
                    continue
                key = <object>self.entries[idx].key  # our own references, before removal
                value = <object>self.entries[idx].value
                self._evict(idx, now)
                break
        finally:
            self._release_pending()
        return key, value  # the tuple is built now that the cache is consistent

    def expire(self, key, ttl):
        """Give key a new ttl from now (None: the cache default); False if it is absent."""
        cdef double now = self._now()
        cdef double expires = self._expires_at(ttl, now)
        cdef Py_ssize_t idx = self._live(key, now)
        if idx < 0:
            return False
        self.entries[idx].expires = expires
        if expires != INFINITY:
            self.has_ttl = True
        return True

    def evict_expired(self):
        """Reclaim every expired entry now; the number reclaimed."""
        cdef double now = self._now()
        cdef Py_ssize_t idx
        cdef Py_ssize_t reclaimed = 0
        self._reserve(2 * self.count)
        try:
            for idx in range(self.top):
                if self.entries[idx].key != NULL and self.entries[idx].expires <= now:
                    self._remove(idx)
                    reclaimed += 1
        finally:
            self.expirations += reclaimed
            self._release_pending()
        return reclaimed

    def clear(self):
        """Drop every entry (and S3-FIFO's ghost); counters keep their totals."""
        self._drop_storage()

    def _after_fork(self):
        """In a forked child: counters from zero (the parent counted what came before)."""
        self.hits = self.misses = self.sets = self.deletes = 0
        self.evictions = self.expirations = 0

    # -- copies and pickles (tiercache/_mapping.py holds what both twins share) ----------

    def _export(self, bint relative, bint ghost):
        """The whole state as a plain tuple (_mapping.STATE_VERSION describes it). Taken in
        two phases, like _snapshot: everything is read before any Python object is built."""
        cdef double now = self._now()
        cdef Py_ssize_t cap = max(1, self.count)
        cdef PyObject **refs = self._refs_buffer()
        cdef double *expiries = <double *>PyMem_Malloc(cap * sizeof(double))
        cdef uint8_t *policy_state = <uint8_t *>PyMem_Malloc(cap * 2)
        cdef uint32_t *ghost_copy = <uint32_t *>PyMem_Malloc(max(1, self.ghost_len) * sizeof(uint32_t))
        cdef Py_ssize_t n, i, start, ghost_len = 0
        cdef list entries = [], ghost_fps = []
        # Phase one, no Python code: the settings, counters, ghost and every live entry.
        if expiries == NULL or policy_state == NULL or ghost_copy == NULL:
            PyMem_Free(refs)
            PyMem_Free(expiries)
            PyMem_Free(policy_state)
            PyMem_Free(ghost_copy)
            raise MemoryError("LocalCache could not allocate a snapshot")
        cdef object timer = self._timer
        cdef bint unbounded = self._unbounded
        cdef Py_ssize_t maxsize = self._maxsize
        cdef double default_ttl = self._default_ttl
        cdef int policy = self._policy
        cdef unsigned long long counters[6]
        counters[:] = [self.hits, self.misses, self.sets, self.deletes, self.evictions, self.expirations]
        if ghost and self.ghost_ring != NULL:
            start = self.ghost_pos if self.ghost_len == self.ghost_cap else 0  # the oldest
            ghost_len = self.ghost_len
            for i in range(ghost_len):
                ghost_copy[i] = self.ghost_ring[(start + i) % self.ghost_cap]
        n = self._collect(refs, now, expiries, policy_state)
        # Phase two: build (the collector, and any finalizer, may run from here on).
        try:
            for i in range(n):
                expiry = expiries[i] - now if relative and expiries[i] != INFINITY else expiries[i]
                entries.append((<object>refs[2 * i], <object>refs[2 * i + 1], expiry,
                                policy_state[2 * i], policy_state[2 * i + 1]))
            for i in range(ghost_len):
                ghost_fps.append(ghost_copy[i])
        finally:
            _release_refs(refs, 2 * n)
            PyMem_Free(expiries)
            PyMem_Free(policy_state)
            PyMem_Free(ghost_copy)
        return (STATE_VERSION, INFINITY if unbounded else maxsize,
                None if default_ttl == INFINITY else default_ttl, ("lru", "s3fifo")[policy], timer,
                relative, entries, tuple(counters), ghost_fps)

    def _import(self, state):
        """Replace everything with an _export()ed state, or raise and change nothing: the
        state is built in a fresh cache, and only a whole one is swapped in."""
        cdef LocalCache fresh = LocalCache.__new__(LocalCache)
        fresh._load(check_state(state))
        self._swap_storage(fresh)
        # fresh now holds the old entries; releasing it may run finalizers, which is safe

    @cython.final
    cdef int _load(self, tuple fields) except -1:
        """_import's work, into this (fresh, private) cache."""
        _, maxsize, ttl, policy, timer, relative, entries, counters, ghost_fps = fields
        keyed = [(fingerprint(PyObject_Hash(key)), key, value, <double>expiry, freq, queue)
                 for key, value, expiry, freq, queue in entries]  # every __hash__ and float first
        self._configure(maxsize, ttl, policy, timer)
        cdef double now = self._now()
        cdef double expires
        cdef Py_ssize_t idx
        for fp, key, value, expiry, freq, queue in keyed:
            expires = <double>expiry
            if relative and expires != INFINITY:
                expires += now
            if expires != INFINITY:
                self.has_ttl = True
            self._reserve(PENDING_RESERVE)
            idx = self._find(key, fp)  # a key twice in a hand-made state: the last one wins
            self._reserve(2)
            if idx >= 0:
                self._remove(idx)
            if self._maxsize:
                self._insert(key, fp, value, expires, now,
                             MAIN if self._policy == S3FIFO and queue else SMALL, freq)
            self._release_pending()
        if self._policy == S3FIFO:
            for fp in ghost_fps:
                self._ghost_add(<uint32_t>fp)
        (self.hits, self.misses, self.sets, self.deletes, self.evictions,
         self.expirations) = counters
        return 0

    @cython.final
    cdef void _swap_storage(self, LocalCache other) noexcept:
        """Exchange everything but the release queue and the subclass hook with other."""
        self.entries, other.entries = other.entries, self.entries
        self.capacity, other.capacity = other.capacity, self.capacity
        self.top, other.top = other.top, self.top
        self.free_head, other.free_head = other.free_head, self.free_head
        self.table, other.table = other.table, self.table
        self.table_mask, other.table_mask = other.table_mask, self.table_mask
        self.count, other.count = other.count, self.count
        self._maxsize, other._maxsize = other._maxsize, self._maxsize
        self._unbounded, other._unbounded = other._unbounded, self._unbounded
        self._default_ttl, other._default_ttl = other._default_ttl, self._default_ttl
        self._policy, other._policy = other._policy, self._policy
        for i in range(2):
            self.head[i], other.head[i] = other.head[i], self.head[i]
            self.tail[i], other.tail[i] = other.tail[i], self.tail[i]
            self.qlen[i], other.qlen[i] = other.qlen[i], self.qlen[i]
        self.small_cap, other.small_cap = other.small_cap, self.small_cap
        self.ghost_ring, other.ghost_ring = other.ghost_ring, self.ghost_ring
        self.ghost_len, other.ghost_len = other.ghost_len, self.ghost_len
        self.ghost_pos, other.ghost_pos = other.ghost_pos, self.ghost_pos
        self.ghost_cap, other.ghost_cap = other.ghost_cap, self.ghost_cap
        self.ghost_alloc, other.ghost_alloc = other.ghost_alloc, self.ghost_alloc
        self.ghost_table, other.ghost_table = other.ghost_table, self.ghost_table
        self.ghost_size, other.ghost_size = other.ghost_size, self.ghost_size
        self._timer, other._timer = other._timer, self._timer
        self.has_ttl, other.has_ttl = other.has_ttl, self.has_ttl
        self.sweep_pos, other.sweep_pos = other.sweep_pos, self.sweep_pos
        self.hits, other.hits = other.hits, self.hits
        self.misses, other.misses = other.misses, self.misses
        self.sets, other.sets = other.sets, self.sets
        self.deletes, other.deletes = other.deletes, self.deletes
        self.evictions, other.evictions = other.evictions, self.evictions
        self.expirations, other.expirations = other.expirations, self.expirations
        self.version += 1
        other.version += 1

    def __setstate__(self, state):
        restore(self, state)

    def __reduce__(self):
        return reduce(self)

    def __copy__(self):
        return shallow_copy(self)

    def __deepcopy__(self, memo):
        return deep_copy(self, memo)

    # -- introspection ---------------------------------------------------------------------

    @property
    def maxsize(self):
        """Most entries the cache holds: an int, or math.inf when unbounded."""
        return INFINITY if self._unbounded else self._maxsize

    @property
    def default_ttl(self):
        """Seconds an entry lives when set without a ttl; None means forever."""
        return None if self._default_ttl == INFINITY else self._default_ttl

    @property
    def policy(self):
        """Eviction policy: "lru" or "s3fifo"."""
        return ("lru", "s3fifo")[self._policy]

    @property
    def timer(self):
        """The injected clock, or None for the monotonic clock."""
        return self._timer

    def stats(self):
        """Counters since creation, with the current size and maxsize."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "sets": self.sets,
            "deletes": self.deletes,
            "evictions": self.evictions,
            "expirations": self.expirations,
            "size": self.count,
            "maxsize": self.maxsize,
        }

    def __repr__(self):
        return f"{type(self).__name__}(maxsize={self.maxsize}, size={self.count}, policy={self.policy!r})"


cdef void _release_refs(PyObject **refs, Py_ssize_t n) noexcept:
    """Drop the references a walk collected, then the array (finalizers may run here)."""
    cdef Py_ssize_t i
    for i in range(n):
        Py_XDECREF(refs[i])
    PyMem_Free(refs)


def _subclass_missing(cache, key):
    """__getitem__ of a subclass on a miss: its __missing__ if it has one (as dict's)."""
    missing = getattr(type(cache), "__missing__", None)
    if missing is None:
        raise KeyError(key)
    return missing(cache, key)


MutableMapping.register(LocalCache)

# Cython cannot declare a traverse for C arrays of objects, so wrap the generated slots: the
# garbage collector must see the keys and values, or a value that refers back to its cache
# would keep both alive forever.
cdef traverseproc _base_traverse = (<_TypeSlots *><void *>LocalCache).tp_traverse
cdef inquiry _base_clear = (<_TypeSlots *><void *>LocalCache).tp_clear


cdef int _traverse(PyObject *obj, visitproc visit, void *arg) noexcept:
    cdef LocalCache cache = <LocalCache>obj
    cdef Py_ssize_t i
    cdef int rc
    for i in range(cache.top):
        if cache.entries[i].key != NULL:
            rc = visit(cache.entries[i].key, arg)
            if rc:
                return rc
            rc = visit(cache.entries[i].value, arg)
            if rc:
                return rc
    for i in range(cache.npending):
        rc = visit(cache.pending[i], arg)
        if rc:
            return rc
    return _base_traverse(obj, visit, arg) if _base_traverse != NULL else 0


cdef int _clear(PyObject *obj) noexcept:
    cdef LocalCache cache = <LocalCache>obj
    cache._drop_storage()
    cache._release_pending()
    return _base_clear(obj) if _base_clear != NULL else 0


(<_TypeSlots *><void *>LocalCache).tp_traverse = _traverse
(<_TypeSlots *><void *>LocalCache).tp_clear = _clear
PyType_Modified(<_TypeSlots *><void *>LocalCache)
