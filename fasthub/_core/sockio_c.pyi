# Stub of the compiled twin: same API as sockio_py.
from .sockio_py import BATCH as BATCH
from .sockio_py import SendBatch as SendBatch
from .sockio_py import ring_owner as ring_owner
from .sockio_py import ring_state as ring_state
from .sockio_py import send_some as send_some
