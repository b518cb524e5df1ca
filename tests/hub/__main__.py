"""``python -m tests.hub`` == ``python -m tests.hub.server``."""
import sys

from .server import main

sys.exit(main())
