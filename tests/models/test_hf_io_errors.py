"""HF checkpoint I/O without torch: sharded indexes, sharding hook, and every error message."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from sspo_jax.models import CheckpointError, ModelError, from_pretrained, save_pretrained
from tests.models.qwen2_fixtures import random_policy, write_checkpoint


def _tensors(path):
    with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _rewrite(path, tensors):
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def _params_equal(a, b):
    _, pa = nnx.split(a, nnx.Param)
    _, pb = nnx.split(b, nnx.Param)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), pa, pb)


def test_round_trip_single_and_sharded(tmp_path):
    model = random_policy(0, tie_word_embeddings=True)
    save_pretrained(model, tmp_path / "one")
    save_pretrained(model, tmp_path / "many", max_shard_bytes=20_000)
    assert "lm_head.weight" not in _tensors(tmp_path / "one")
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    _params_equal(model, from_pretrained(tmp_path / "one"))
    _params_equal(model, from_pretrained(tmp_path / "many"))
    cfg = json.loads((tmp_path / "one" / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert cfg["dtype"] == "float32" and cfg["tie_word_embeddings"] is True


def test_sharding_hook_and_mesh(tmp_path):
    write_checkpoint(tmp_path, seed=1)
    mesh = jax.make_mesh((jax.device_count(),), ("fsdp",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    seen = []

    def sharding_for(path, shape):
        seen.append(path)
        spec = jax.sharding.PartitionSpec("fsdp") if path == ("model", "embed") else \
            jax.sharding.PartitionSpec()
        return jax.sharding.NamedSharding(mesh, spec)

    model = from_pretrained(tmp_path, sharding_for=sharding_for)
    assert ("model", "layers", "q_kernel") in seen and ("lm_head",) in seen
    assert model.model.embed[...].sharding.spec == jax.sharding.PartitionSpec("fsdp")
    replicated = from_pretrained(tmp_path, mesh=mesh)
    assert replicated.model.embed[...].sharding.is_fully_replicated
    assert len(replicated.model.embed[...].sharding.device_set) == jax.device_count()
    np.testing.assert_array_equal(model.model.embed[...], replicated.model.embed[...])


def test_tied_checkpoint_with_redundant_lm_head_is_accepted(tmp_path):
    model = write_checkpoint(tmp_path, seed=2, tie_word_embeddings=True)
    t = _tensors(tmp_path)
    _rewrite(tmp_path, {**t, "lm_head.weight": t["model.embed_tokens.weight"]})
    loaded = from_pretrained(tmp_path)
    assert loaded.lm_head is None
    _params_equal(model, loaded)


def test_load_in_bf16(tmp_path):
    write_checkpoint(tmp_path, seed=3)
    model = from_pretrained(tmp_path, dtype=jnp.bfloat16)
    _, params = nnx.split(model, nnx.Param)
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}


def test_missing_tensor(tmp_path):
    write_checkpoint(tmp_path)
    t = _tensors(tmp_path)
    del t["model.layers.1.mlp.up_proj.weight"]
    _rewrite(tmp_path, t)
    with pytest.raises(CheckpointError,
                       match=r"missing 1 tensor\(s\): model\.layers\.1\.mlp\.up_proj"):
        from_pretrained(tmp_path)


def test_missing_lm_head_when_untied(tmp_path):
    write_checkpoint(tmp_path, tie_word_embeddings=False)
    t = _tensors(tmp_path)
    del t["lm_head.weight"]
    _rewrite(tmp_path, t)
    with pytest.raises(CheckpointError, match="missing 1 tensor.*lm_head.weight"):
        from_pretrained(tmp_path)


def test_unexpected_tensor(tmp_path):
    write_checkpoint(tmp_path)
    t = _tensors(tmp_path)
    t["model.layers.2.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"]
    _rewrite(tmp_path, t)
    with pytest.raises(CheckpointError, match="unexpected tensor.*model.layers.2.mlp.up_proj"):
        from_pretrained(tmp_path)


def test_shape_mismatch(tmp_path):
    write_checkpoint(tmp_path)
    t = _tensors(tmp_path)
    t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
    _rewrite(tmp_path, t)
    with pytest.raises(CheckpointError, match=r"shape mismatch for tensor "
                       r"'model\.layers\.0\.self_attn\.k_proj\.weight': expected \(16, 32\), "
                       r"got \(8, 32\)"):
        from_pretrained(tmp_path)


def test_unsupported_model_type(tmp_path):
    write_checkpoint(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "mistral"}))
    with pytest.raises(ModelError, match="unsupported model_type 'mistral'; "
                       "sspo_jax.models supports qwen2, qwen3, llama$") as info:
        from_pretrained(tmp_path)
    assert "\n" not in str(info.value)


def test_unreadable_files(tmp_path):
    write_checkpoint(tmp_path / "bad")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read safetensors file .*model.safetensors"):
        from_pretrained(tmp_path / "bad")

    write_checkpoint(tmp_path / "empty")
    (tmp_path / "empty" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors or model.safetensors.index"):
        from_pretrained(tmp_path / "empty")

    (tmp_path / "nocfg").mkdir()
    with pytest.raises(ModelError, match="cannot read .*config.json"):
        from_pretrained(tmp_path / "nocfg")

    write_checkpoint(tmp_path / "badjson")
    (tmp_path / "badjson" / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read .*config.json"):
        from_pretrained(tmp_path / "badjson")

    save_pretrained(random_policy(0), tmp_path / "shards", max_shard_bytes=20_000)
    shard = sorted((tmp_path / "shards").glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"cannot read safetensors file .*{shard.name}"):
        from_pretrained(tmp_path / "shards")
    shutil.rmtree(tmp_path / "shards")
