"""``python -m mtlseg``: the command line (also how DDP processes re-run a command)."""

import sys

from mtlseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
