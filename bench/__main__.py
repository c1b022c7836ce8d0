"""``python -m bench`` is the ``bench`` command."""

import sys

from bench.entry import main

sys.exit(main())
