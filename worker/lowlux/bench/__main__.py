"""``python -m lowlux.bench KIND PAYLOAD``: one measurement in its own process (see :mod:`.child`)."""

import sys

from .child import main

main(sys.argv[1:])
