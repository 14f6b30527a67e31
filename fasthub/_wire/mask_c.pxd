# C-level API of mask_c, cimported by protocol_c (see mask_py.py for the pure twin).

cpdef bytes apply_mask(object data, object mask)
cpdef bytes unmask_payload(bytes data, Py_ssize_t mask_pos, Py_ssize_t length)
cpdef void unmask_append(
    bytearray buf, bytes data, Py_ssize_t start, Py_ssize_t end, bytes mask, Py_ssize_t phase
) except *
