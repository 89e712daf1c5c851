# Histogram: fixed buckets and a sum, behind the tiered cache's latency metrics (load
# duration, Redis call duration, invalidation lag). Included by _local.pyx.
#
# Its own file because it shares nothing with the cache but the module: it is compiled only
# so that observe() is one C call, atomic under the GIL, with no lock per operation.


@cython.final
cdef class Histogram:
    """Observations counted in fixed buckets, with their sum: observe() is one C call, so
    threads need no lock (the GIL is held throughout)."""

    cdef double *bounds
    cdef unsigned long long *counts   # one per bound, and one past the last (+Inf)
    cdef Py_ssize_t n
    cdef double total
    cdef readonly tuple upper_bounds

    def __cinit__(self, bounds):
        cdef Py_ssize_t i
        self.upper_bounds = check_buckets(bounds)
        self.n = len(self.upper_bounds)
        self.bounds = <double *>PyMem_Malloc(self.n * sizeof(double))
        self.counts = <unsigned long long *>PyMem_Malloc((self.n + 1) * sizeof(unsigned long long))
        if self.bounds == NULL or self.counts == NULL:
            raise MemoryError()
        for i in range(self.n):
            self.bounds[i] = self.upper_bounds[i]
        memset(self.counts, 0, (self.n + 1) * sizeof(unsigned long long))

    def __dealloc__(self):
        PyMem_Free(self.bounds)
        PyMem_Free(self.counts)

    def observe(self, double value):
        """Count value in the first bucket whose bound is >= value (NaN is ignored)."""
        cdef Py_ssize_t lo = 0, hi = self.n, mid
        if value != value:
            return
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.bounds[mid] < value:
                lo = mid + 1
            else:
                hi = mid
        self.counts[lo] += 1
        self.total += value

    def snapshot(self):
        """(counts per bucket, the last one past every bound, and the sum), read at once."""
        return [self.counts[i] for i in range(self.n + 1)], self.total
