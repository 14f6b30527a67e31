# Stub of the compiled twin: same API as the pure module it is compiled from.
from .relay_py import CONGESTED as CONGESTED
from .relay_py import DONE as DONE
from .relay_py import NOT_HANDLED as NOT_HANDLED
from .relay_py import Relay as Relay
from .relay_py import ack as ack
