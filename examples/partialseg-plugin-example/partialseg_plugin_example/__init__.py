"""An example plugin for partialseg-bench: the masker ``center_points`` and the architecture ``tiny_fcn``.

Both are announced by entry points in this package's ``pyproject.toml``; nothing here is imported until the harness
asks for one of the names.
"""
