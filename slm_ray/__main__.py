"""``python -m slm_ray COMMAND ...``: the same as the ``slm-ray`` command."""

import sys

from slm_ray.commands import main

sys.exit(main())
