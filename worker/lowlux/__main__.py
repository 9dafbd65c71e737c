"""``python -m lowlux``: the ``lowlux`` command, where no entry point is installed (a borrowed GPU
machine running the source tree with ``PYTHONPATH=worker``)."""

from lowlux.cli import main

raise SystemExit(main())
