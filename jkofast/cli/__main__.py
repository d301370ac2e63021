"""``python -m jkofast.cli ...``: the same as ``python -m jkofast ...`` (jkofast/__main__.py)."""
import sys

from .command_line import main

sys.exit(main())
