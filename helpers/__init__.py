"""The course's code: every layer, model, training loop, metric and plot helper the
notebooks use, each written once and unit-tested.

The notebook machinery (profiles and configs, assets, the setup call, reports, the
runner and the export) lives apart in :mod:`helpers.nb`. Modules are imported explicitly
(``from helpers import attention``, ``from helpers.nb import runtime``); importing the
package has no side effects.
"""
