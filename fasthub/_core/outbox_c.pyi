# Stub of the compiled twin: same API as the pure module it is compiled from.
from .outbox_py import (
    CLOSED as CLOSED,
)
from .outbox_py import (
    DROPPED as DROPPED,
)
from .outbox_py import (
    ENC_BITS as ENC_BITS,
)
from .outbox_py import (
    ENC_MSGPACK as ENC_MSGPACK,
)
from .outbox_py import (
    KIND_BINARY as KIND_BINARY,
)
from .outbox_py import (
    KIND_CLOSE as KIND_CLOSE,
)
from .outbox_py import (
    KIND_PLAIN as KIND_PLAIN,
)
from .outbox_py import (
    KIND_RAW as KIND_RAW,
)
from .outbox_py import (
    KIND_TEXT as KIND_TEXT,
)
from .outbox_py import (
    OVERFLOW as OVERFLOW,
)
from .outbox_py import (
    QUEUED as QUEUED,
)
from .outbox_py import (
    Fanout as Fanout,
)
from .outbox_py import (
    Outbox as Outbox,
)
from .outbox_py import (
    Payload as Payload,
)
