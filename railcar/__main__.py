"""``python -m railcar``: the ``railcar`` command (:func:`railcar.cli.main`)."""

import sys

from railcar.cli import main

sys.exit(main())
