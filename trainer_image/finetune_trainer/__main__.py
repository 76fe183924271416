"""`python -m finetune_trainer` is the same as the `finetune-trainer` console script."""

import sys

from .cli import main

sys.exit(main())
