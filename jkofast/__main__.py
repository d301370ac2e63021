"""``python -m jkofast ...`` is the ``jkofast`` command (also what torchrun launches)."""
import sys

from .cli import main

sys.exit(main())
