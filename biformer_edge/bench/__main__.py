"""``python -m biformer_edge.bench``: biformer-bench behind the console error boundary (one line, exit status)."""
from ..console import error_boundary
from . import main

error_boundary(main)()
