"""The one compiled part: pipeline/_canonical.c, the canonical JSON of the content hash in C.

``optional=True``: without a C compiler the install still succeeds and ``pipeline.hashing`` computes
the same hashes in Python (~3x slower; a bulk run records which one ran: ``sync_runs.params``,
``canonicaliser``). Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pipeline._canonical", ["pipeline/_canonical.c"], optional=True)])
