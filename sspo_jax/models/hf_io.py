"""Hugging Face checkpoint I/O for the Flax Qwen2, Qwen3 and Llama models, without torch.

Loading (`from_pretrained`, `load_into`) reads a local HF directory: `config.json` plus either
`model.safetensors` or a sharded `model.safetensors.index.json`. Tensors are read one at a time
with `safetensors.safe_open(..., framework="numpy")` (bf16 arrives as an `ml_dtypes.bfloat16`
array), cast to the target parameter dtype, transposed from HF [out, in] to [in, out] where
needed, stacked per parameter over the layer axis, and placed on device with `jax.device_put`
(onto `sharding_for(path, shape)` when given) before the next parameter is read. The model itself is
built with `nnx.eval_shape`, so no random initial weights are allocated: host memory peaks at
one stacked parameter plus one tensor beyond what the device holds.

Every expected tensor is checked by name and shape before any data is read, and the errors name
the problem: missing tensor(s), unexpected tensor(s), shape mismatch (name, expected, got),
unsupported `model_type` (from `DecoderConfig`), unreadable file. Checkpoints with
`tie_word_embeddings` normally have no `lm_head.weight`; when one is present anyway it is the
same tensor as the embedding and is skipped. Stale `rotary_emb.inv_freq` buffers are skipped.

Export (`save_pretrained`) writes `config.json` and `model.safetensors` (or shards plus an index)
that `transformers.AutoModelForCausalLM.from_pretrained` loads as the config's family
(`Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `LlamaForCausalLM`); tied models get no lm_head
tensor. Arrays are gathered with `jax.device_get`, so export runs on a single host.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from sspo_jax.models.config import DecoderConfig
from sspo_jax.models.decoder import DecoderForCausalLM

ParamPath = tuple[str, ...]
ShardingFn = Callable[[ParamPath, tuple[int, ...]], "jax.sharding.Sharding | None"]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD_FILE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")

# Stacked layer parameter -> (HF name inside `model.layers.{i}.`, transpose [out,in] -> [in,out]).
_LAYER_TENSORS = {
    "input_norm": ("input_layernorm.weight", False),
    "q_kernel": ("self_attn.q_proj.weight", True),
    "q_bias": ("self_attn.q_proj.bias", False),
    "k_kernel": ("self_attn.k_proj.weight", True),
    "k_bias": ("self_attn.k_proj.bias", False),
    "v_kernel": ("self_attn.v_proj.weight", True),
    "v_bias": ("self_attn.v_proj.bias", False),
    "q_norm": ("self_attn.q_norm.weight", False),
    "k_norm": ("self_attn.k_norm.weight", False),
    "o_kernel": ("self_attn.o_proj.weight", True),
    "post_norm": ("post_attention_layernorm.weight", False),
    "gate_kernel": ("mlp.gate_proj.weight", True),
    "up_kernel": ("mlp.up_proj.weight", True),
    "down_kernel": ("mlp.down_proj.weight", True),
}
_TOP_TENSORS = {
    ("model", "embed"): "model.embed_tokens.weight",
    ("model", "final_norm"): "model.norm.weight",
    ("lm_head",): "lm_head.weight",
}
_BIASES = ("q_bias", "k_bias", "v_bias")


from sspo_jax.errors import CheckpointError  # noqa: E402 - a checkpoint that cannot be read or written


def _family_layer_tensors(cfg: DecoderConfig) -> list[str]:
    """The stacked parameter names whose tensors the HF model of `cfg`'s family has per layer."""
    names = [n for n in _LAYER_TENSORS if cfg.model_type == "qwen2" or n not in _BIASES]
    return [n for n in names if cfg.qk_norm or n not in ("q_norm", "k_norm")]


def hf_tensor_shapes(cfg: DecoderConfig, *, include_lm_head: bool | None = None) -> dict[str, tuple]:
    """Every HF tensor name of the family's ForCausalLM with this config -> its HF shape.

    `include_lm_head` defaults to `not cfg.tie_word_embeddings`. For qwen2, q/k/v biases are
    always listed (HF Qwen2 always has them; a `qkv_bias=False` model exports zeros); qwen3 adds
    `self_attn.q_norm.weight` and `k_norm.weight` [head_dim]; llama has neither.
    """
    h, d, i, v = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size
    qd, kvd = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    per_layer = {
        "input_norm": (h,), "q_kernel": (qd, h), "q_bias": (qd,), "k_kernel": (kvd, h),
        "k_bias": (kvd,), "v_kernel": (kvd, h), "v_bias": (kvd,), "o_kernel": (h, qd),
        "post_norm": (h,), "gate_kernel": (i, h), "up_kernel": (i, h), "down_kernel": (h, i),
        "q_norm": (d,), "k_norm": (d,),
    }
    shapes = {"model.embed_tokens.weight": (v, h)}
    for layer in range(cfg.num_hidden_layers):
        for name in _family_layer_tensors(cfg):
            shapes[f"model.layers.{layer}.{_LAYER_TENSORS[name][0]}"] = per_layer[name]
    shapes["model.norm.weight"] = (h,)
    if include_lm_head if include_lm_head is not None else not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, h)
    return shapes


class SafetensorsReader(contextlib.AbstractContextManager):
    """Lazy tensor-by-tensor reader of a HF directory (single file or sharded index)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._stack = contextlib.ExitStack()
        self._handles: dict[str, Any] = {}
        index = os.path.join(self.path, INDEX_FILE)
        single = os.path.join(self.path, SINGLE_FILE)
        if os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as fh:
                    weight_map = json.load(fh)["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"cannot read {index}: {e!r}") from e
            self.file_of = {str(k): str(f) for k, f in weight_map.items()}
        elif os.path.isfile(single):
            self.file_of = {name: SINGLE_FILE for name in self._open(SINGLE_FILE).keys()}
        else:
            present = sorted(os.listdir(self.path)) if os.path.isdir(self.path) else []
            raise CheckpointError(
                f"no {SINGLE_FILE} or {INDEX_FILE} in {self.path} (found: {present}); only "
                "safetensors checkpoints are supported, re-save with safe_serialization=True")

    def _open(self, file: str):
        if file not in self._handles:
            full = os.path.join(self.path, file)
            try:
                self._handles[file] = self._stack.enter_context(safe_open(full, framework="numpy"))
            except Exception as e:  # safetensors raises several types for unreadable files
                raise CheckpointError(f"cannot read safetensors file {full}: {e}") from e
        return self._handles[file]

    def names(self) -> set[str]:
        """Names of every tensor in the checkpoint."""
        return set(self.file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor `name`, read from the header without loading the data."""
        try:
            return tuple(self._open(self.file_of[name]).get_slice(name).get_shape())
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read tensor {name!r} from "
                                  f"{os.path.join(self.path, self.file_of[name])}: {e}") from e

    def get(self, name: str) -> np.ndarray:
        """Tensor `name` as a NumPy array (CheckpointError naming the file when it cannot be read)."""
        try:
            return self._open(self.file_of[name]).get_tensor(name)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read tensor {name!r} from "
                                  f"{os.path.join(self.path, self.file_of[name])}: {e}") from e

    def __exit__(self, *exc):
        self._stack.close()
        self._handles.clear()
        return None


def _check_tensors(reader: SafetensorsReader, cfg: DecoderConfig, *, need_lm_head: bool,
                   ignore: set[str]) -> None:
    expected = hf_tensor_shapes(cfg, include_lm_head=need_lm_head)
    if not cfg.qkv_bias:
        expected = {k: s for k, s in expected.items() if not k.endswith(("q_proj.bias",
                                                                          "k_proj.bias",
                                                                          "v_proj.bias"))}
    present = reader.names()
    missing = [n for n in expected if n not in present]
    if missing:
        raise CheckpointError(f"checkpoint {reader.path} is missing {len(missing)} tensor(s): "
                              f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    unexpected = sorted(n for n in present - set(expected) - ignore if not _IGNORED.match(n))
    if unexpected:
        raise CheckpointError(
            f"checkpoint {reader.path} has {len(unexpected)} unexpected tensor(s) for this config: "
            f"{', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    for name, want in expected.items():
        got = reader.shape(name)
        if got != tuple(want):
            raise CheckpointError(f"shape mismatch for tensor {name!r}: expected {tuple(want)}, "
                                  f"got {got}")


def _hf_source(path: ParamPath, cfg: DecoderConfig) -> tuple[list[str], bool, bool] | None:
    """(HF names, transpose, stacked over layers) feeding the Flax parameter at `path`."""
    if path in _TOP_TENSORS:
        return [_TOP_TENSORS[path]], False, False
    if len(path) == 3 and path[:2] == ("model", "layers") and path[2] in _LAYER_TENSORS:
        hf, transpose = _LAYER_TENSORS[path[2]]
        return [f"model.layers.{i}.{hf}" for i in range(cfg.num_hidden_layers)], transpose, True
    return None


def _read_param(reader: SafetensorsReader, names: list[str], transpose: bool, stacked: bool,
                dtype: np.dtype) -> np.ndarray:
    """Reads (and casts, transposes, stacks) the HF tensors of one Flax parameter."""
    out = None
    for i, name in enumerate(names):
        t = reader.get(name)
        t = t.T if transpose else t
        if not stacked:
            return np.ascontiguousarray(t, dtype=dtype)
        if out is None:
            out = np.empty((len(names), *t.shape), dtype)
        out[i] = t  # casts to `dtype` in place
    return out


def _param_variables(module: nnx.Module) -> Iterator[tuple[ParamPath, nnx.Variable]]:
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        yield tuple(str(p) for p in path), var


def resolve_sharding_fn(mesh, sharding_for: ShardingFn | None) -> ShardingFn | None:
    """`sharding_for` if given; else replicate on `mesh` if given; else None (default device)."""
    if sharding_for is not None:
        return sharding_for
    if mesh is None:
        return None
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return lambda path, shape: replicated


def load_into(module: nnx.Module, path: str | os.PathLike, cfg: DecoderConfig, *, dtype=jnp.float32,
              mesh=None, sharding_for: ShardingFn | None = None,
              need_lm_head: bool | None = None) -> set[ParamPath]:
    """Fills the decoder parameters of an (abstract or concrete) module from a HF checkpoint.

    Args:
      module: a `DecoderForCausalLM` or a critic (any module whose decoder parameters live at the
        paths documented in `decoder.py`); its matching `nnx.Param`s are replaced in place.
      path: HF directory.
      cfg: the config read from `path`.
      dtype: parameter dtype to cast to while reading.
      mesh: optional `jax.sharding.Mesh`; without `sharding_for`, parameters are replicated on it.
      sharding_for: optional `(param_path, shape) -> Sharding | None` (path like ("model", "layers",
        "q_kernel")); overrides `mesh`. None places on the default device.
      need_lm_head: require an `lm_head.weight` tensor; default `not cfg.tie_word_embeddings`.
        A critic passes False: its checkpoint's LM head is then ignored.
    Returns:
      The set of parameter paths that were filled (the rest, e.g. a critic head, are untouched).
    """
    dtype = np.dtype(jnp.dtype(dtype))
    place = resolve_sharding_fn(mesh, sharding_for)
    if need_lm_head is None:
        need_lm_head = not cfg.tie_word_embeddings
    filled = set()
    with SafetensorsReader(path) as reader:
        _check_tensors(reader, cfg, need_lm_head=need_lm_head, ignore={"lm_head.weight"})
        for ppath, var in _param_variables(module):
            src = _hf_source(ppath, cfg)
            if src is None:
                continue
            names, transpose, stacked = src
            host = _read_param(reader, names, transpose, stacked, dtype)
            if tuple(host.shape) != tuple(var.shape):
                raise CheckpointError(f"parameter {'/'.join(ppath)} expects shape {var.shape}, "
                                      f"checkpoint gives {host.shape}")
            sharding = place(ppath, tuple(var.shape)) if place is not None else None
            var.set_value(jax.device_put(host, sharding) if sharding is not None
                          else jnp.asarray(host))
            del host
            filled.add(ppath)
    return filled


def from_pretrained(path: str | os.PathLike, *, dtype=jnp.float32, compute_dtype=None, mesh=None,
                    sharding_for: ShardingFn | None = None,
                    remat: bool = False, scan_layers: bool = True) -> DecoderForCausalLM:
    """Loads a HF Qwen2, Qwen3 or Llama directory into a Flax `DecoderForCausalLM`.

    Args:
      path: local directory with config.json and model.safetensors (or a sharded index).
      dtype: parameter dtype (tensors are cast while reading; fp32 default).
      compute_dtype: activation dtype (default: `dtype`); e.g. bf16 compute over fp32 params.
      mesh, sharding_for: placement, see `load_into`.
      remat: recompute layer activations in the backward pass.
      scan_layers: False unrolls the training forward's layer scan (see `DecoderModel`).
    Raises:
      ModelError: unreadable or unsupported config.json (e.g. model_type, listing the supported).
      CheckpointError: missing/unexpected tensor, shape mismatch, unreadable safetensors file.
    """
    cfg = DecoderConfig.from_pretrained_dir(path)
    model = nnx.eval_shape(lambda: DecoderForCausalLM(
        cfg, rngs=nnx.Rngs(0), param_dtype=dtype, compute_dtype=compute_dtype, remat=remat,
        scan_layers=scan_layers))
    filled = load_into(model, path, cfg, dtype=dtype, mesh=mesh, sharding_for=sharding_for)
    unfilled = [p for p, _ in _param_variables(model) if p not in filled]
    if unfilled:  # a programming error: every policy parameter has an HF source
        raise CheckpointError(f"parameters without a checkpoint source: {unfilled}")
    return model


def _export_tensors(model: DecoderForCausalLM, dtype: np.dtype) -> Iterator[tuple[str, np.ndarray]]:
    cfg = model.config
    layers = model.model.layers

    def host(x) -> np.ndarray:
        return np.asarray(jax.device_get(x)).astype(dtype, copy=False)

    yield "model.embed_tokens.weight", host(model.model.embed[...])
    stacked = {name: host(getattr(layers, name)[...]) for name in _LAYER_TENSORS
               if hasattr(layers, name)}
    for i in range(cfg.num_hidden_layers):
        for name, (hf, transpose) in _LAYER_TENSORS.items():
            if name in stacked:
                t = stacked[name][i]
                yield f"model.layers.{i}.{hf}", np.ascontiguousarray(t.T if transpose else t)
            elif name in _BIASES and cfg.model_type == "qwen2":  # HF Qwen2 always has them
                width = stacked[name.replace("bias", "kernel")].shape[-1]
                yield f"model.layers.{i}.{hf}", np.zeros((width,), dtype)
    yield "model.norm.weight", host(model.model.final_norm[...])
    if model.lm_head is not None:
        yield "lm_head.weight", host(model.lm_head[...])


def _share(file: str) -> None:
    """Gives a written weight file the permissions of an ordinary file (safetensors creates it
    owner-only), so that serving engines running as another user can read the export."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(file, 0o666 & ~umask)


def save_pretrained(model: DecoderForCausalLM, path: str | os.PathLike, *, dtype=None,
                    max_shard_bytes: int | None = None) -> None:
    """Writes `model` as a HF directory that transformers loads as the config's family.

    Args:
      model: the Flax policy.
      path: output directory (created; existing config/weight files are overwritten).
      dtype: tensor dtype to write (default: the model's parameter dtype), e.g. "bfloat16".
      max_shard_bytes: when the weights exceed this, write `model-0000k-of-0000n.safetensors`
        shards and `model.safetensors.index.json` instead of one file.
    """
    if not isinstance(model, DecoderForCausalLM):
        raise TypeError(f"save_pretrained expects a DecoderForCausalLM (Qwen2ForCausalLM), got "
                        f"{type(model).__name__}")
    dtype = np.dtype(jnp.dtype(dtype if dtype is not None else model.model.param_dtype))
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    for stale in os.listdir(path):
        if stale in (SINGLE_FILE, INDEX_FILE) or _SHARD_FILE.match(stale):
            os.remove(os.path.join(path, stale))
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as fh:
        json.dump(model.config.to_hf_dict(dtype=dtype.name), fh, indent=2, sort_keys=True)
    metadata = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(dict(_export_tensors(model, dtype)), os.path.join(path, SINGLE_FILE),
                  metadata=metadata)
        _share(os.path.join(path, SINGLE_FILE))
        return
    # Shards are written as soon as they fill (one shard in host memory at a time) under
    # temporary names, then renamed once their count is known.
    written: list[tuple[str, list[str]]] = []
    shard: dict[str, np.ndarray] = {}
    size = total = 0

    def flush():
        tmp = f".shard-{len(written) + 1:05d}.tmp"
        save_file(shard, os.path.join(path, tmp), metadata=metadata)
        written.append((tmp, list(shard)))

    for name, t in _export_tensors(model, dtype):
        if shard and size + t.nbytes > max_shard_bytes:
            flush()
            shard, size = {}, 0
        shard[name] = t
        size += t.nbytes
        total += t.nbytes
    flush()
    weight_map = {}
    for k, (tmp, names) in enumerate(written, start=1):
        file = f"model-{k:05d}-of-{len(written):05d}.safetensors"
        os.replace(os.path.join(path, tmp), os.path.join(path, file))
        _share(os.path.join(path, file))
        weight_map.update({name: file for name in names})
    with open(os.path.join(path, INDEX_FILE), "w", encoding="utf-8") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
