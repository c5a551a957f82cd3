"""`PromptBatcher`: deterministic shuffled batches of left-padded prompts, repeated G times,
with a cursor (epoch, position) that can be saved and restored exactly.

Order: epoch e visits the records in the permutation drawn from ``default_rng([seed, e])`` (or
in file order when not shuffling). Batches run straight across epoch boundaries, so no record
is dropped or replayed and resuming at a boundary trains on the next epoch (PITFALLS.md 9).
The cursor names the next record to read; it only advances when a batch is complete, so a
batch that raises leaves it unchanged.

Multi-host: every process runs its own batcher over the same source and reads every global batch
(tokenizing B prompts is cheap next to sampling them), so the cursor is identical in every process
and a checkpoint's cursor resumes anywhere; each process then keeps its rows (`PromptBatch.select`,
`PromptBatch.process_slice`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sspo_jax.data.config import DataConfig
from sspo_jax.data.prompts import PromptEncoder
from sspo_jax.data.records import DataError, PromptRecord, PromptSource


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """B prompts, each repeated G times in consecutive rows (N = B * G rows).

    Attributes:
      input_ids: int32 [N, P], left-padded prompt tokens (P a bucket length).
      attention_mask: int32 [N, P], 1 on prompt tokens, 0 on padding.
      group_ids: int32 [N], the prompt (0..B-1) of each row: rows [p0]*G + [p1]*G + ...
      record_indices: int64 [N], each row's record index in the source.
      prompts: N formatted prompt texts (template applied, before truncation).
      golds: N gold answers, aligned with the rows.
      metas: N metadata dicts, aligned with the rows (one shared dict per group: read only).
      group_size: G.
      truncated: prompts of this batch cut to max_prompt_len.
      rejected: over-long records skipped while filling this batch.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    group_ids: np.ndarray
    record_indices: np.ndarray
    prompts: list[str]
    golds: list[str]
    metas: list[dict[str, Any]]
    group_size: int
    truncated: int
    rejected: int

    @property
    def num_prompts(self) -> int:
        """B, the number of distinct prompts."""
        return len(self.golds) // self.group_size

    def select(self, rows: np.ndarray) -> "PromptBatch":
        """The batch restricted to `rows` (int [n], whole groups of G consecutive rows, in order):
        e.g. the rows one process of a multi-host job samples and scores. The prompt width stays
        the global batch's, so every process's rows fit one global array. `truncated` and
        `rejected` stay the whole batch's counts."""
        rows = np.asarray(rows, dtype=np.int64)
        g = self.group_size
        if rows.size % g or np.any(rows[::g] % g) or np.any(np.diff(rows.reshape(-1, g), axis=1) != 1):
            raise DataError(f"rows {rows.tolist()} are not whole groups of {g} consecutive rows")
        return dataclasses.replace(
            self, input_ids=self.input_ids[rows], attention_mask=self.attention_mask[rows],
            group_ids=self.group_ids[rows], record_indices=self.record_indices[rows],
            prompts=[self.prompts[i] for i in rows], golds=[self.golds[i] for i in rows],
            metas=[self.metas[i] for i in rows])

    def process_slice(self, process_index: int, process_count: int) -> "PromptBatch":
        """Process `process_index`'s share of the batch: prompts [i * B / P, (i + 1) * B / P) with
        their G rows each (the rows a process holds on a mesh whose devices are ordered by process).

        Raises:
          DataError: B is not a multiple of the process count P.
        """
        b = self.num_prompts
        if process_count < 1 or not 0 <= process_index < process_count:
            raise DataError(f"process_index={process_index} must be in [0, {process_count})")
        if b % process_count:
            raise DataError(f"a batch of {b} prompts does not split over {process_count} processes: make "
                            "data.batch_size a multiple of the number of processes")
        per = b // process_count * self.group_size
        return self.select(np.arange(process_index * per, (process_index + 1) * per))


class PromptBatcher:
    """Yields `PromptBatch`es from a `PromptSource` per a `DataConfig`.

    Args:
      source: the records.
      tokenizer: a `transformers` tokenizer or a `tokenizers.Tokenizer`.
      cfg: `DataConfig` (batch_size, group_size, shuffle, seed, num_epochs, drop_last,
        max_prompt_len, overlong_prompt, bucket_lengths and the template settings).
    """

    def __init__(self, source: PromptSource, tokenizer: Any, cfg: DataConfig) -> None:
        if len(source) == 0:
            raise DataError(f"{source.name}: no records")
        self.source, self.cfg = source, cfg
        self.encoder = PromptEncoder(tokenizer, cfg)
        self.epoch = self.position = 0
        self.totals = {"batches": 0, "truncated": 0, "rejected": 0, "dropped": 0}
        self._order_epoch, self._order = -1, np.zeros(0, dtype=np.int64)

    # -- cursor -----------------------------------------------------------------------------

    def state(self) -> dict[str, int]:
        """The cursor and counters as plain ints (checkpointable): epoch, position, seed,
        source_len, batches, truncated, rejected, dropped."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.cfg.seed,
                "source_len": len(self.source), **self.totals}

    def restore(self, state: dict[str, int]) -> None:
        """Continue from a `state()`: the next batch is exactly the one that followed it."""
        for key in ("epoch", "position", "seed", "source_len"):
            if key not in state:
                raise DataError(f"data cursor state has no {key!r}; pass what PromptBatcher.state() returned")
        if int(state["source_len"]) != len(self.source) or int(state["seed"]) != self.cfg.seed:
            raise DataError(f"data cursor was saved for {state['source_len']} records with seed {state['seed']}, "
                            f"but this batcher has {len(self.source)} records with seed {self.cfg.seed}: "
                            "resume with the same data and data.seed")
        if not 0 <= int(state["position"]) < len(self.source) or int(state["epoch"]) < 0:
            raise DataError(f"data cursor (epoch={state['epoch']}, position={state['position']}) is out of range")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        for key in self.totals:
            self.totals[key] = int(state.get(key, 0))

    @property
    def exhausted(self) -> bool:
        """True once num_epochs passes have been read."""
        return self.cfg.num_epochs is not None and self.epoch >= self.cfg.num_epochs

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            n = len(self.source)
            if self.cfg.shuffle:
                self._order = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
            else:
                self._order = np.arange(n)
            self._order_epoch = epoch
        return self._order

    # -- batches ----------------------------------------------------------------------------

    def __iter__(self) -> "PromptBatcher":
        return self

    def __next__(self) -> PromptBatch:
        return self.next_batch()

    def next_batch(self) -> PromptBatch:
        """The next batch; StopIteration after num_epochs passes.

        Raises:
          DataError: a prompt is too long and ``overlong_prompt='error'``, or every record is
            too long to be accepted.
        """
        cfg, n = self.cfg, len(self.source)
        epoch, position = self.epoch, self.position
        chosen: list[tuple[int, PromptRecord, str, list[int]]] = []
        truncated = rejected = 0
        while len(chosen) < cfg.batch_size:
            if cfg.num_epochs is not None and epoch >= cfg.num_epochs:
                break
            index = int(self._epoch_order(epoch)[position])
            position += 1
            if position == n:
                epoch, position = epoch + 1, 0
            record = self.source[index]
            text = self.encoder.format(record.prompt)
            ids = self.encoder.encode(text)
            if len(ids) > cfg.max_prompt_len:
                if cfg.overlong_prompt == "error":
                    raise DataError(f"{_where(self.source.name, index, record)}: the prompt has "
                                    f"{len(ids)} tokens > data.max_prompt_len={cfg.max_prompt_len}; "
                                    "raise max_prompt_len or set data.overlong_prompt to 'truncate' or 'reject'")
                if cfg.overlong_prompt == "reject":
                    rejected += 1
                    if rejected >= n and not chosen:
                        raise DataError(f"{self.source.name}: every prompt is longer than data.max_prompt_len="
                                        f"{cfg.max_prompt_len} tokens; raise it")
                    continue
                ids = ids[-cfg.max_prompt_len:]
                truncated += 1
            chosen.append((index, record, text, ids))
        if not chosen or (len(chosen) < cfg.batch_size and cfg.drop_last):
            self.epoch, self.position = epoch, position
            self.totals["dropped"] += len(chosen)
            self.totals["rejected"] += rejected
            self.totals["truncated"] += truncated
            raise StopIteration
        self.epoch, self.position = epoch, position
        self.totals["batches"] += 1
        self.totals["truncated"] += truncated
        self.totals["rejected"] += rejected
        return self._assemble(chosen, truncated, rejected)

    def _assemble(self, chosen: list[tuple[int, PromptRecord, str, list[int]]], truncated: int,
                  rejected: int) -> PromptBatch:
        g = self.cfg.group_size
        longest = max(len(ids) for *_, ids in chosen)
        width = next(b for b in self.cfg.buckets if b >= longest)
        b = len(chosen)
        ids_arr = np.full((b, width), self.encoder.pad_id, dtype=np.int32)
        mask = np.zeros((b, width), dtype=np.int32)
        for row, (*_, ids) in enumerate(chosen):
            if ids:
                ids_arr[row, width - len(ids):] = ids
                mask[row, width - len(ids):] = 1
        records = [record for _, record, _, _ in chosen]
        return PromptBatch(
            input_ids=np.repeat(ids_arr, g, axis=0),
            attention_mask=np.repeat(mask, g, axis=0),
            group_ids=np.repeat(np.arange(b, dtype=np.int32), g),
            record_indices=np.repeat(np.array([i for i, *_ in chosen], dtype=np.int64), g),
            prompts=[text for _, _, text, _ in chosen for _ in range(g)],
            golds=[r.answer for r in records for _ in range(g)],
            metas=[r.meta for r in records for _ in range(g)],
            group_size=g,
            truncated=truncated,
            rejected=rejected,
        )


def _where(source_name: str, index: int, record: PromptRecord) -> str:
    if "line" in record.meta:
        return f"{source_name}:{record.meta['line']}"
    if "row" in record.meta:
        return f"{source_name}: row {record.meta['row']}"
    return f"{source_name}: record {index}"
