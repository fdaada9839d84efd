"""`python -m gateway.cli`: the `dukat` command."""

import sys

from gateway.cli.main import main

sys.exit(main())
