"""``python -m jarvis_performance.bench``: see :func:`jarvis_performance.bench.main`."""

import sys

from . import main

sys.exit(main())
