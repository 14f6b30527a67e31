# The compiled twin has the pure module's API exactly.
from .frames_py import build_close as build_close
from .frames_py import build_frame as build_frame
from .frames_py import build_header as build_header
from .frames_py import close_code_allowed as close_code_allowed
