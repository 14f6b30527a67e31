# Stub of the compiled twin: same API as the pure module it is compiled from.
from .streams_py import MemoryStream as MemoryStream
from .streams_py import MemoryStreams as MemoryStreams
from .streams_py import new_epoch as new_epoch
from .streams_py import with_offset as with_offset
