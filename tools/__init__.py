"""Tools around runs: results tables beside the papers' numbers, training curves, retrieval grids.

Each module is a script (``python tools/<name>.py --help``) whose functions can also be imported.
"""
