# Stub of the compiled twin: same API as reactor_py.
from .reactor_py import Reactor as Reactor
from .reactor_py import SocketTransport as SocketTransport
