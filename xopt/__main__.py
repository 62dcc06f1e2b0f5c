"""`python -m xopt ...` runs the `xopt` command."""

import sys

from xopt.cli import main

if __name__ == "__main__":
    sys.exit(main())
