"""Test helpers for sing-audit and its plugins: contract checks, audits to run, results to render.

- :mod:`sing_audit.testing.contracts` — :func:`check_backbone` and the checks it runs on a
  backbone plugin (features are the head's input, ``features @ Wᵀ + b`` are the logits).
- :mod:`sing_audit.testing.audits` — configs that run offline: the synthetic scenario
  (:func:`synthetic_audit`) and tiny image folders with a precomputed target
  (:func:`image_folder_audit`), and :data:`PIPELINE_POLICY` for pipeline tests.
- :mod:`sing_audit.testing.results` — :func:`sample_result`, a hand-built result for
  report sections and reporters.
"""

from __future__ import annotations

from .audits import PIPELINE_POLICY, image_folder_audit, save_npz, synthetic_audit, write_config
from .contracts import (
    BackboneReport,
    check_backbone,
    check_describe,
    check_features_are_head_input,
    check_head,
    check_logits,
    check_transform,
    numerical_rank,
)
from .results import sample_result

__all__ = [
    "BackboneReport",
    "PIPELINE_POLICY",
    "check_backbone",
    "check_describe",
    "check_features_are_head_input",
    "check_head",
    "check_logits",
    "check_transform",
    "image_folder_audit",
    "numerical_rank",
    "sample_result",
    "save_npz",
    "synthetic_audit",
    "write_config",
]
