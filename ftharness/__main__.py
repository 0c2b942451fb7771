"""`python -m ftharness` runs the command line."""

import sys

from ftharness.cli import main

sys.exit(main())
