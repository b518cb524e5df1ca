"""``python -m devtools.hub`` == ``python -m devtools.hub.server``."""
import sys

from .server import main

sys.exit(main())
