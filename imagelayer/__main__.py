"""``python -m imagelayer`` is ``pyimg``."""
import sys

from .cli import main

sys.exit(main())
