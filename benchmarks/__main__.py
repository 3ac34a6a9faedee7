"""``python -m benchmarks [--quick] [--out DIR] ...``"""

import sys

from .run import main

sys.exit(main())
