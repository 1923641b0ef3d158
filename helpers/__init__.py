"""The project's one library: every layer, training loop, metric and plot helper the
notebooks use, each written once and unit-tested.

Modules are imported explicitly (``from helpers import attention, profiles``); importing
the package has no side effects.
"""
