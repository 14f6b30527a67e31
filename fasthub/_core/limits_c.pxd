# Types for limits_py.py compiled as fasthub._core.limits_c.
cimport cython

cdef class RateLimiter:
    cdef public double rate
    cdef public double byte_rate
    cdef public double tokens
    cdef public double byte_tokens
    cdef public double stamp
    cdef public long strikes
    cdef public long long refused
    @cython.locals(elapsed=double, wait=double, byte_wait=double)
    cpdef double take(self, double now, Py_ssize_t nbytes)
