"""``python -m collector.client``: the same as the ``iot-client`` console script."""

import sys

from .cli import main

sys.exit(main())
