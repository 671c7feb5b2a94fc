"""``python -m ait2i.cli ...`` = ``ait2i ...`` (what worker processes, ``torchrun`` and ``accelerate launch`` run:
``accelerate launch -m ait2i.cli bench generate ...``)."""

import sys

from . import main

sys.exit(main())
