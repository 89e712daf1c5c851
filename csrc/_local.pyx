# cython: language_level=3, embedsignature=True, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False, binding=False
#
# The compiled L1 (built as tiercache._local_c). tiercache/_local_py.py is its readable
# twin, with the full docstrings; the two run the same algorithm on the same layout and the
# hypothesis tests hold them to identical results and eviction order.
#
# One extension module, split by concern into include files (as msgpack's _cmsgpack.pyx
# includes _packer.pyx and _unpacker.pyx). Cython pastes each file in at its `include` line
# below, so this is still one C module: the front and the batch loops call LocalCache's cdef
# methods as direct C calls, with no .pxd to keep in step. This file holds what more than one
# include needs: the cimports, imports and externs, and the shared constants and helpers.
#
#   _store.pxi      LocalCache: the entry array, hash table, LRU and S3-FIFO queues, ghost and
#                   TTL sweep, and the GC hooks. Its block comment explains the data structure.
#   _front.pxi      L1Gate and TieredFront: the tiered cache's L1 fast path (a get() that hits
#                   L1 runs no Python frame).
#   _histogram.pxi  Histogram: the bucket counts behind the latency metrics (observe() is one
#                   C call, so it needs no lock).
#   _batch.pxi      decode_reply, encode_keys, fill_l1: the per-key loops of batch operations.
#   _echo.pxi       drop_echoes: the invalidation subscriber's wait, which skips the cache's
#                   own messages without the GIL.
#
# _store.pxi comes first: the other includes use LocalCache's C fields and methods. setup.py
# lists every include in depends=, so editing one rebuilds the module.

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.object cimport PyObject, Py_EQ, PyObject_Call, PyObject_Hash, PyObject_RichCompareBool
from cpython.ref cimport Py_INCREF, Py_DECREF, Py_XINCREF, Py_XDECREF
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from libc.math cimport INFINITY, NAN

from collections.abc import Mapping, MutableMapping
from types import GenericAlias

from tiercache._mapping import (
    STATE_VERSION, CacheItemsView, CacheKeysView, CacheValuesView, check_state, deep_copy, reduce,
    restore, shallow_copy,
)
from tiercache._validate import (
    check_buckets, check_maxsize, check_policy, default_ttl_seconds, slot_limit, ttl_seconds,
)

# The type slots that LocalCache's GC hooks (the end of _store.pxi) wrap.
cdef extern from "Python.h":
    ctypedef int (*visitproc)(PyObject*, void*)
    ctypedef int (*traverseproc)(PyObject*, visitproc, void*)
    ctypedef int (*inquiry)(PyObject*)
    ctypedef struct _TypeSlots "PyTypeObject":
        traverseproc tp_traverse
        inquiry tp_clear
    void PyType_Modified(_TypeSlots *)

cdef extern from "_clock.h":
    double monotonic "tiercache_monotonic" () noexcept nogil
    double clock_resolution "tiercache_clock_resolution" () noexcept nogil

# Subtracted from expiries on the built-in clock (see _clock.h); an injected timer is exact.
cdef double CLOCK_SLACK = clock_resolution()

cdef object _MISSING = object()
MISSING = _MISSING


cdef inline uint32_t fingerprint(Py_hash_t key_hash) noexcept:
    cdef uint64_t x = <uint64_t>key_hash
    x ^= x >> 33
    x *= 0xFF51AFD7ED558CCDULL
    x ^= x >> 33
    cdef uint32_t fp = <uint32_t>(x >> 32)
    return fp if fp else 1


include "_store.pxi"
include "_front.pxi"
include "_histogram.pxi"
include "_batch.pxi"
include "_echo.pxi"
