"""``python -m ait2i.bench <subcommand> ...``: the ``ait2i bench`` command, for launchers that run modules
(``accelerate launch -m ait2i.bench generate ...``, ``torchrun -m ait2i.bench generate ...``)."""

import sys

from .cli import main

sys.exit(main())
