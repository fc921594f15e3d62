"""`python -m driver_service` runs the CLI."""

import sys

from driver_service.cli import main

sys.exit(main())
