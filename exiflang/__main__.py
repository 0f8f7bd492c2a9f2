"""`python -m exiflang` runs the console script."""

import sys

from exiflang.cli import main

sys.exit(main())
