# The compiled twin has the pure module's API exactly.
from .handshake_py import Upgrade as Upgrade
from .handshake_py import parse_upgrade as parse_upgrade
from .handshake_py import plain_upgrade as plain_upgrade
