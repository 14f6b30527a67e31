# Stub of the compiled twin: same API as the pure module it is compiled from.
from .conn_py import Connection as Connection
