"""`python -m trainspect`: the same as the `trainspect` command."""

import sys

from trainspect.cli import main

sys.exit(main())
