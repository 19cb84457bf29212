"""Command-line tools, each run as `python tools/NAME.py` (see its docstring); a package only so
that they can share tools/_common.py."""
