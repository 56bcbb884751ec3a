"""The run: one way from the config to the files, one job per module.

- :mod:`~sing_audit.pipeline.plan` — what to run: the config with every component built
- :mod:`~sing_audit.pipeline.sources` — the dataset, features and embeddings: from the
  cache (:mod:`~sing_audit.pipeline.cache`, with the cache shared across audits behind it:
  :mod:`~sing_audit.pipeline.shared_cache`), joined from shards
  (:mod:`~sing_audit.pipeline.shard`) or extracted (:mod:`~sing_audit.pipeline.extraction`)
  on the run's device (:mod:`~sing_audit.pipeline.devices`)
- :mod:`~sing_audit.pipeline.text`, :mod:`~sing_audit.pipeline.images` — the services probes
  get as ``ctx.encode_text`` and ``ctx.images``
- :mod:`~sing_audit.pipeline.crossfit` — alignment and the cross-fitted translators
- :mod:`~sing_audit.pipeline.model` — the analysis of one model (probes, statistics) and
  its evidence (:mod:`~sing_audit.pipeline.evidence`)
- :mod:`~sing_audit.pipeline.build` — the results, each built once by a pure function
- :mod:`~sing_audit.pipeline.outputs`, :mod:`~sing_audit.pipeline.run_folder` — the output folder
- :mod:`~sing_audit.pipeline.stages` — stage times, the run log, where an interrupt happened
- :mod:`~sing_audit.pipeline.audit` — ``run_audit`` and ``run_shard``, holding it together;
  :mod:`~sing_audit.pipeline.explain` — the same stages for one image
"""

from .audit import ShardReport, run_audit, run_shard
from .plan import Plan, audit_identity, build_plan

__all__ = ["Plan", "ShardReport", "audit_identity", "build_plan", "run_audit", "run_shard"]
