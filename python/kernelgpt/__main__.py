"""``python -m kernelgpt ...``: see kernelgpt.cli."""
import sys

from .cli import main

sys.exit(main())
