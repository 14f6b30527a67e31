# The compiled twin has the pure module's API exactly.
from .utf8_py import Utf8Validator as Utf8Validator
from .utf8_py import is_valid_utf8 as is_valid_utf8
