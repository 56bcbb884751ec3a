"""Test helpers for sing-audit and its plugins: contract checks, audits to run, results to render.

- :mod:`sing_audit.testing.contracts` — :func:`check_backbone` and the checks it runs on a
  backbone plugin (features are the head's input, ``features @ Wᵀ + b`` are the logits).
- :mod:`sing_audit.testing.audits` — configs that run offline: the synthetic scenario
  (:func:`synthetic_audit`) and tiny image folders with a precomputed target
  (:func:`image_folder_audit`), and :data:`PIPELINE_POLICY` for pipeline tests.
- :mod:`sing_audit.testing.results` — :func:`sample_result`, a hand-built result for
  report sections and reporters.
- :mod:`sing_audit.testing.hub` — :func:`fake_hub_repo`, a hub cache in a test's folder
  for hub ids and revisions offline.

Every name in a submodule's ``__all__`` is importable from here.
"""

from __future__ import annotations

from . import audits, contracts, hub, results
from .audits import *  # noqa: F403 - the public names, as audits.__all__ lists them
from .contracts import *  # noqa: F403
from .hub import *  # noqa: F403
from .results import *  # noqa: F403

__all__ = sorted([*audits.__all__, *contracts.__all__, *results.__all__])
