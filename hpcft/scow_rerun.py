"""Kept at this name because saved SCOW portal scripts run ``python -m hpcft.scow_rerun RUN_DIR``:
the code is :mod:`hpcft.submit.rerun`."""

import sys

from .submit.rerun import main, rerun

__all__ = ["main", "rerun"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
