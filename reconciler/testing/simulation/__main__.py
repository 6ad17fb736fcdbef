"""`python -m reconciler.testing.simulation`: what `scripts/simulate` runs."""

import sys

from reconciler.testing.simulation.run import main

sys.exit(main())
