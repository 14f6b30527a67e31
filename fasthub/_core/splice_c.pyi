# The compiled twin has the pure module's API exactly.
from .splice_py import DEPTH_CAP as DEPTH_CAP
from .splice_py import Splice as Splice
