"""``python -m lowlux.train {train,eval} ...`` until the main CLI carries these subcommands."""

import sys

from .cli import main

sys.exit(main())
