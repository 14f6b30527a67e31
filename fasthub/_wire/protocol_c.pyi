# The compiled twin has the pure module's API exactly.
from .protocol_py import ServerProtocol as ServerProtocol
