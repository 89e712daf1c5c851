# L1Gate and TieredFront: the L1 fast path of TieredCache and AsyncTieredCache. Included by
# _local.pyx, after _store.pxi (TieredFront calls LocalCache._get).
#
# Its own file because it is not part of the L1 but the tiered cache's front door, compiled
# so that a get() answered from L1 runs no Python frame. The tiered cache classes subclass
# TieredFront and supply _get_slow for everything else.


@cython.final
cdef class L1Gate:
    """Whether a tiered cache's L1 may serve and store; shut while invalidation is unhealthy."""

    cdef public bint open
    cdef public unsigned long long bypassed  # reads that skipped L1 while it was shut

    def __cinit__(self):
        self.open = True


cdef class TieredFront:
    """The L1 fast path of TieredCache: get() answers an L1 hit without a Python frame.

    Subclasses provide _get_slow(key, default, model) for everything else: a miss, a key of
    the wrong type, model=, or an L1 shut while invalidation is unhealthy.
    """

    cdef LocalCache _l1
    cdef object _path           # None for the root namespace, else the namespace path tuple
    cdef L1Gate _gate           # shared by every view of one cache

    def _bind_l1(self, LocalCache l1 not None, path, L1Gate gate not None):
        self._l1 = l1
        self._path = path
        self._gate = gate

    @property
    def l1_enabled(self):
        """False while the L1 is shut (it then neither serves nor stores)."""
        return self._gate.open

    def get(self, key, default=None, model=None):
        """The value for key from L1, else Redis, else the loader; default on a miss."""
        cdef object value
        if model is None:  # with a model, the slow path looks in L1 (and counts) itself
            if self._gate.open:
                if type(key) is str or type(key) is bytes:
                    value = self._l1._get(key if self._path is None else (self._path, key), _MISSING)
                    if value is not _MISSING:
                        return value
            else:
                self._gate.bypassed += 1
        return self._get_slow(key, default, model)

    def _l1_get(self, key):
        """The L1 value of key, or tiercache.core's MISSING marker (for the async front)."""
        if not self._gate.open:
            self._gate.bypassed += 1
        elif type(key) is str or type(key) is bytes:
            return self._l1._get(key if self._path is None else (self._path, key), _MISSING)
        return _MISSING

    def _l1_get_many(self, keys, dict found):
        """_l1_get for every key: hits go into found, the rest come back as a list."""
        cdef list missing = []
        cdef object value
        for key in keys:
            if not self._gate.open:
                self._gate.bypassed += 1
            elif type(key) is str or type(key) is bytes:
                value = self._l1._get(key if self._path is None else (self._path, key), _MISSING)
                if value is not _MISSING:
                    found[key] = value
                    continue
            missing.append(key)
        return missing
