"""The run's device, and each model loaded onto it once."""

from __future__ import annotations

from .extraction import resolve_device

__all__ = ["ModelLoader"]


class ModelLoader:
    """Resolves ``run.device`` on first use (``cuda:<local rank>`` for a torchrun worker)
    and loads each model once, only when something needs it (a cache miss, a probe)."""

    def __init__(self, device: str, local_rank: int | None = None):
        self._requested = device
        self._local_rank = local_rank
        self._device: str | None = None
        self._loaded: set[int] = set()

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self._requested)
            if self._local_rank is not None and self._device == "cuda":
                self._device = f"cuda:{self._local_rank}"  # one GPU per torchrun worker
        return self._device

    def ensure_loaded(self, component) -> None:
        """Load a model once per run."""
        if id(component) not in self._loaded:
            component.load(self.device)
            self._loaded.add(id(component))
