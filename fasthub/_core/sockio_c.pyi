# Stub of the compiled twin: same API as sockio_py.
from .sockio_py import send_some as send_some
