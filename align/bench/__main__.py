"""`python -m align.bench`: see align/bench/__init__.py."""

import sys

from align.bench import cli

sys.exit(cli())
