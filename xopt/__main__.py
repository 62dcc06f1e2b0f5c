"""`python -m xopt`: the `xopt` command, for environments where the script is not on PATH."""

import sys

from xopt.cli import main

if __name__ == "__main__":
    sys.exit(main())
