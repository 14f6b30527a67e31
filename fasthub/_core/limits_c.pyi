# Stub of the compiled twin: same API as the pure module it is compiled from.
from .limits_py import RateLimiter as RateLimiter
