"""`python -m immunode.cli`."""

import sys

from immunode.cli import main

sys.exit(main())
