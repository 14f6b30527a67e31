# The compiled twin has the pure module's API exactly.
from .mask_py import apply_mask as apply_mask
from .mask_py import unmask_append as unmask_append
from .mask_py import unmask_payload as unmask_payload
