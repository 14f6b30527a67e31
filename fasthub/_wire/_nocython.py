"""Stand-in for the ``cython`` module when Cython is not installed (pure-Python installs).

The ``*_py.py`` sources test ``cython.compiled`` to import their pure helpers; once compiled,
Cython folds that test away and the names come from the ``.pxd`` cimports instead.
"""

compiled = False
