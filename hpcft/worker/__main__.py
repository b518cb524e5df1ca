"""``python -m hpcft.worker RUN_DIR``: run one job's worker in this process (debugging, tests)."""

import sys

from hpcft.worker.main import standalone

sys.exit(standalone(sys.argv[1:]))
