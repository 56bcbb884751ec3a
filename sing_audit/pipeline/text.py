"""A target's text encoder as the run's service (:class:`TextEncoder`), cached on disk.

The text stage runs in resumable chunks: prompts are embedded a chunk at a time, and every
finished chunk is stored in the cache at once, so Ctrl-C (or a crash) loses at most the
chunk being encoded.

Each distinct prompt is encoded once (two classes of the same name, a repeated template or
concept share one row), and the chunks take the distinct prompts shortest first (by
characters, a proxy for tokens that needs no tokenizer): a chunk holds prompts of similar
length, which the target batches by their exact token length and cuts after the longest
(:mod:`sing_audit.text_batches`). The order is a function of the prompts alone, so a rerun
builds the same chunks and finds the finished ones.

A chunk entry (kind :data:`CHUNK_KIND`) holds the *raw* embeddings of its prompts, keyed
by the target's description and the prompts themselves: a rerun finds exactly the
chunks that were finished, whatever interrupted the run, and a changed model, weight or
prompt never matches. The class prompts' template ensemble is the definition
``Target.class_text_embeddings`` uses (:func:`~sing_audit.components.template_ensemble`:
per class the mean of its templates' unit embeddings, renormalised); it is accumulated
chunk by chunk (each prompt's unit embedding added to the class sums it belongs to), so
no more than one chunk of raw embeddings is held, and equals an unchunked run's up to float
rounding (summation order, differently sized batches).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np

from ..authors_files import read_class_prompt_embeddings
from ..components import EmbeddingTarget, Target
from ..scores import unit_rows
from ..progress import progress
from ..errors import DataError
from ..store import content_key
from ..text_batches import distinct_prompts
from .cache import ArrayStore
from .devices import ModelLoader
from .stages import StageClock

__all__ = ["TEXT_CHUNK_PROMPTS", "CHUNK_KIND", "ChunkedText", "TextEncoder"]

log = logging.getLogger("sing_audit")

#: distinct prompts per resumable chunk: a few hundred, one forward batch of the open_clip
#: and karlo text encoders (:data:`sing_audit.text_batches.CPU_TEXT_BATCH`); the chunks
#: being sorted by length, each batch is cut close to its own prompts' length
TEXT_CHUNK_PROMPTS = 256

#: store kind of the chunk entries
CHUNK_KIND = "text-chunks"


class ChunkedText:
    """Embeds prompts through ``encode`` (P prompts -> P×n raw embeddings) a chunk at a
    time, each chunk stored in ``store`` when done and read back instead of encoded again.

    ``describe``: what the embeddings depend on (the target's description; its prompt
    templates are left out of the key, since the prompts themselves are in it).
    ``computing()``: a context entered once around the chunks that must be encoded (the
    run's text stage, which also loads the model): never entered when every chunk is
    in the cache. ``label`` names the target in the log.
    """

    def __init__(
        self,
        store: ArrayStore,
        describe: dict[str, Any],
        encode: Callable[[list[str]], np.ndarray],
        computing: Callable[[], AbstractContextManager],
        label: str,
        chunk_prompts: int = TEXT_CHUNK_PROMPTS,
    ):
        self.store = store
        self.describe = {k: v for k, v in describe.items() if k != "templates"}
        self._encode = encode
        self.computing = computing
        self.label = label
        self.chunk_prompts = max(1, int(chunk_prompts))

    def key(self, prompts: Sequence[str]) -> str:
        return content_key("text-chunk", self.describe, list(prompts))

    def _cached(self, prompts: list[str]) -> np.ndarray | None:
        hit = self.store.load(CHUNK_KIND, self.key(prompts), mmap=False)
        if hit is None:
            return None
        values = np.asarray(hit[0].get("values"))
        return values if values.ndim == 2 and values.shape[0] == len(prompts) else None

    def _encoded(self, prompts: list[str]) -> np.ndarray:
        emb = np.asarray(self._encode(prompts), dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] != len(prompts):
            raise DataError(f"target {self.label}: text encoder returned shape {emb.shape} for {len(prompts)} prompts")
        return emb

    def run(self, chunks: list[list[str]], reduce: Callable[[int, np.ndarray], Any]) -> list[Any]:
        """``reduce(i, raw)`` for each chunk ``i`` of prompts, in order: stored chunks are
        read, the others encoded inside one ``computing()`` and stored one by one as they
        finish."""
        results: list[Any] = [None] * len(chunks)
        missing = []
        for i, prompts in enumerate(chunks):
            raw = self._cached(prompts)
            if raw is None:
                missing.append(i)
            else:
                results[i] = reduce(i, raw)
        reused = len(chunks) - len(missing)
        if reused:
            log.info("text: %d of %d prompt chunks from cache (target %s)", reused, len(chunks), self.label)
        if missing:
            with self.computing(), progress(total=sum(len(chunks[i]) for i in missing),
                                            desc=f"text {self.label}", unit="prompt") as bar:
                for i in missing:
                    raw = self._encoded(chunks[i])
                    self.store.save(CHUNK_KIND, self.key(chunks[i]), {"values": raw})
                    results[i] = reduce(i, raw)
                    bar.update(len(chunks[i]))
        return results

    def forget(self, chunks: list[list[str]]) -> None:
        """Remove the entries of ``chunks`` (once what was built from them is stored)."""
        for prompts in chunks:
            self.store.remove(CHUNK_KIND, self.key(prompts))

    # ----------------------------------------------------------------- uses

    def plan(self, prompts: Sequence[str]) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
        """``(chunks, position, inverse)``: the distinct prompts, shortest first (stable:
        equal lengths keep their first-seen order), in chunks of ``chunk_prompts``;
        ``inverse[k]`` is prompt k's distinct index and ``position[d]`` that distinct
        prompt's place in the chunks' concatenation."""
        distinct, inverse = distinct_prompts(prompts)
        order = sorted(range(len(distinct)), key=lambda d: len(distinct[d]))
        position = np.empty(len(distinct), dtype=np.int64)
        position[order] = np.arange(len(distinct))
        size = self.chunk_prompts
        chunks = [[distinct[d] for d in order[i : i + size]] for i in range(0, len(order), size)]
        return chunks, position, inverse

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """P prompts -> P×n raw embeddings, each distinct prompt encoded once (see :meth:`plan`)."""
        prompts = [str(p) for p in prompts]
        if not prompts:
            with self.computing():
                return self._encoded(prompts)
        chunks, position, inverse = self.plan(prompts)
        raw = np.concatenate(self.run(chunks, lambda i, values: values), axis=0)
        return raw[position[inverse]]

    @staticmethod
    def prompts_of_classes(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
        """Every template per class, in the order ``Target.class_text_embeddings`` uses."""
        return [t.format(str(n)) for n in class_names for t in templates]

    def class_chunks(self, class_names: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
        """The chunks the class prompts are encoded in (their distinct prompts, see :meth:`plan`)."""
        return self.plan(self.prompts_of_classes(class_names, list(templates)))[0]

    def class_ensemble(self, class_names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """c×n unit class embeddings: the template ensemble of every class's prompts,
        equal to ``Target.class_text_embeddings`` (see the module's docstring)."""
        templates = list(templates)
        t = len(templates)
        if not list(class_names):
            raise DataError(f"target {self.label}: no class to embed")
        if t == 0:
            raise DataError(f"target {self.label}: no prompt template to embed the classes with")
        prompts = self.prompts_of_classes(class_names, templates)
        chunks, position, inverse = self.plan(prompts)
        # the class prompts' places in the chunks' concatenation, grouped by chunk
        place = position[inverse]
        slots = np.argsort(place, kind="stable")
        starts = np.cumsum([0] + [len(c) for c in chunks])
        bounds = np.searchsorted(place[slots], starts)
        owner = np.arange(len(prompts)) // t  # the class of each prompt
        sums: list[np.ndarray] = []

        def add(i: int, raw: np.ndarray) -> None:
            unit = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
            if not sums:
                sums.append(np.zeros((len(prompts) // t, raw.shape[1]), dtype=np.float64))
            mine = slots[bounds[i] : bounds[i + 1]]
            np.add.at(sums[0], owner[mine], unit[place[mine] - starts[i]])

        self.run(chunks, add)
        mean = sums[0] / t
        return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


class TextEncoder:
    """One target's text embeddings for the run: new prompts (``encode``, what probes get
    as ``ctx.encode_text``) and the class prompts' ensemble (``class_text``), both cached
    on disk; the target is loaded (inside the text stage) only on a miss.

    ``describe``: the target's description as the run keys it; ``name``: its name."""

    def __init__(self, store: ArrayStore, clock: StageClock, loader: ModelLoader, target: Target,
                 describe: dict[str, Any], name: str):
        self.store, self.clock, self.loader = store, clock, loader
        self.target, self.describe, self.name = target, describe, name
        self._class_text: dict[str, np.ndarray] = {}
        #: where the last :meth:`class_text` came from (results' ``class_prompts``)
        self.class_prompts: dict[str, Any] = {}

    def _chunked(self) -> ChunkedText:
        @contextmanager
        def computing():
            with self.clock.stage("text"):
                self.loader.ensure_loaded(self.target)
                yield

        return ChunkedText(self.store, self.describe, self.target.encode_text, computing, self.name)

    def encode(self, prompts: list[str]) -> np.ndarray:
        """``prompts -> K×n`` raw embeddings, cached on disk in chunks (a rerun after an
        interrupt encodes only the chunks not yet done). A target without a text encoder
        raises its own error."""
        prompts = [str(p) for p in prompts]
        if isinstance(self.target, EmbeddingTarget):
            return self.target.encode_text(prompts)
        return self._chunked().encode(prompts)

    def class_text(self, class_names: list[str]) -> np.ndarray:
        """c×n unit class embeddings (the template ensemble), cached. Encoded in resumable
        chunks of whole classes, each stored as it finishes and removed once the ensemble
        is stored; a target that defines its own ``class_text_embeddings`` is called once."""
        t = self.target
        if isinstance(t, EmbeddingTarget):
            self.class_prompts = {"source": "precomputed"}
            return t.class_text_embeddings(class_names)
        path = getattr(t, "class_prompts", None)
        if path is not None:
            # the user's (or the SING authors') own prompt embeddings: read, matched to the
            # classes by name or head index, never encoded (the model is not loaded for them)
            emb, info = read_class_prompt_embeddings(path, list(class_names))
            self.class_prompts = info
            return unit_rows(emb)
        self.class_prompts = {"source": "templates", "templates": list(t.templates)}
        key = content_key("text", self.describe, list(t.templates), class_names)
        if key in self._class_text:
            return self._class_text[key]
        hit = self.store.load("text", key, mmap=False)
        if hit is not None:
            emb = np.asarray(hit[0]["values"])
        elif type(t).class_text_embeddings is not Target.class_text_embeddings:
            with self.clock.stage("text"):  # its own ensemble: nothing to chunk from outside
                self.loader.ensure_loaded(t)
                emb = t.class_text_embeddings(class_names)
            self.store.save("text", key, {"values": emb})
        else:
            chunked = self._chunked()
            emb = chunked.class_ensemble(class_names, list(t.templates))
            self.store.save("text", key, {"values": emb})
            chunked.forget(chunked.class_chunks(class_names, list(t.templates)))
        self._class_text[key] = emb
        return emb
