"""``python -m cloudckpt``: the command line."""

import sys

from cloudckpt.cli import main

sys.exit(main())
