"""``python -m napari_rverdict.cli``: the same as the ``rverdict`` command."""

import sys

from napari_rverdict.cli.main import main

sys.exit(main())
