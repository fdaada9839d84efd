"""`python -m worker.host` (or `dukat host`): the worker host process."""

import sys

from worker.host.api import main

sys.exit(main())
