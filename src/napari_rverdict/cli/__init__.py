"""The ``rverdict`` command line (also ``python -m napari_rverdict``): one module per command group.

``main`` parses and dispatches (:mod:`.main`); ``common`` holds the options the commands share; ``simulate``,
``train`` (train, evaluate), ``volume`` (phantom, predict, fit, compare) and ``report`` (protocol-report) each
``register`` their sub-commands.
"""

from napari_rverdict.cli.main import main

__all__ = ["main"]
