"""``python -m kernelgpt ...``: see kernelgpt.cli."""
import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the package imports: no traceback
    sys.stderr.write("kernelgpt: interrupted\n")
    sys.exit(130)

sys.exit(main())
