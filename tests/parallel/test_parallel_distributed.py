"""Multi-process settings (config and SSPO_* environment variables), and the per-process batch rows
as far as one process can check them (the two-process run is test_parallel_multiprocess.py)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from sspo_jax.data import DataError, PromptBatch
from sspo_jax.parallel import (DistributedConfig, DistributedError, MeshConfig, check_row_split, detect_launcher,
                               from_local_rows, gather, gather_local_rows, initialize, local_rows, make_mesh,
                               process_rows, resolve, rows_by_process)
from sspo_jax.parallel.host_data import all_processes, per_process, reduce_metrics
from sspo_jax.algorithms.config import ConfigError
from sspo_jax.train import load_config

ENV = {"SSPO_COORDINATOR_ADDRESS": "10.0.0.1:1234", "SSPO_NUM_PROCESSES": "4", "SSPO_PROCESS_ID": "2"}


def test_single_process_needs_nothing():
    assert resolve(DistributedConfig(), {}) is None
    assert resolve(DistributedConfig(num_processes=1, process_id=0), {}) is None  # one process in total
    assert resolve(DistributedConfig(enabled=False), ENV) is None  # switched off despite the environment
    assert resolve(DistributedConfig(), {**ENV, "SSPO_DISTRIBUTED": "0"}) is None
    assert initialize(DistributedConfig(), {}) is False and jax.process_count() == 1


def test_settings_from_the_environment_and_the_config():
    s = resolve(DistributedConfig(), {**ENV, "SSPO_LOCAL_DEVICE_IDS": "0, 1"})
    assert (s.coordinator_address, s.num_processes, s.process_id, s.local_device_ids) == ("10.0.0.1:1234", 4, 2,
                                                                                         (0, 1))
    # the shared part in the config, the process id per process from the environment
    s = resolve(DistributedConfig(coordinator_address="node0:9999", num_processes=2), {"SSPO_PROCESS_ID": "1"})
    assert (s.coordinator_address, s.num_processes, s.process_id, s.launcher) == ("node0:9999", 2, 1, None)
    cfg = load_config(None, ["distributed.coordinator_address=node0:9999", "distributed.num_processes=2",
                             "distributed.process_id=1"])
    assert resolve(cfg.distributed, {}).process_id == 1


@pytest.mark.parametrize("cfg, env, match", [
    (DistributedConfig(), {"SSPO_NUM_PROCESSES": "2"}, r"also set distributed.coordinator_address .*"
                                                        r"SSPO_COORDINATOR_ADDRESS.*process_id"),
    (DistributedConfig(), {**ENV, "SSPO_PROCESS_ID": "4"}, r"process_id=4 must be smaller than .*num_processes=4"),
    (DistributedConfig(process_id=1), ENV, r"process_id=1 in the config but the environment says 2"),
    (DistributedConfig(), {**ENV, "SSPO_NUM_PROCESSES": "two"}, r"SSPO_NUM_PROCESSES='two' must be an integer"),
    (DistributedConfig(), {**ENV, "SSPO_COORDINATOR_ADDRESS": "node0"}, r"SSPO_COORDINATOR_ADDRESS='node0' must be"),
    (DistributedConfig(), {"SSPO_DISTRIBUTED": "maybe"}, r"SSPO_DISTRIBUTED='maybe' must be 1, 0 or auto"),
    (DistributedConfig(), {**ENV, "SSPO_LOCAL_DEVICE_IDS": "0,a"}, r"comma-separated integers"),
])
def test_incomplete_or_inconsistent_settings_are_clear_errors(cfg, env, match):
    with pytest.raises(DistributedError, match=match):
        resolve(cfg, env)


def test_config_values_are_checked_when_read():
    with pytest.raises(ConfigError, match=r"distributed.process_id=3 must be smaller than distributed.num_processes=2"):
        load_config(None, ["distributed.num_processes=2", "distributed.process_id=3"])
    with pytest.raises(ConfigError, match=r"'host:port'"):
        load_config(None, ["distributed.coordinator_address=localhost"])
    with pytest.raises(ConfigError, match=r"distinct non-negative"):
        load_config(None, ["distributed.local_device_ids=[0,0]"])


def test_launchers_are_detected_from_their_environment_and_fill_in_the_rest():
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
             "SLURM_LOCALID": "0"}
    assert detect_launcher(slurm) == "slurm"
    assert detect_launcher({**slurm, "SLURM_NTASKS": "1"}) is None  # one task: a single-process run
    assert detect_launcher({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "4"}) == "openmpi"
    assert detect_launcher({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}) == "tpu-gke"
    assert detect_launcher({"TPU_WORKER_HOSTNAMES": "w0"}) is None
    s = resolve(DistributedConfig(), slurm)
    assert s.launcher == "slurm" and s.coordinator_address is None and s.process_id is None  # JAX detects them
    s = resolve(DistributedConfig(), {**slurm, "SSPO_NUM_PROCESSES": "2"})  # partial is fine with a launcher
    assert s.num_processes == 2
    s = resolve(DistributedConfig(enabled=True), {})  # forced (Cloud TPU VMs): all left to JAX
    assert s is not None and s.coordinator_address is None


def test_initialising_after_jax_started_is_a_clear_error():
    jax.devices()  # the backend is up in this test process
    with pytest.raises(DistributedError, match="before any JAX computation"):
        initialize(DistributedConfig(), ENV)


def test_batch_slices_per_process():
    g, b = 2, 4
    batch = PromptBatch(input_ids=np.arange(b * g * 3).reshape(b * g, 3).astype(np.int32),
                        attention_mask=np.ones((b * g, 3), np.int32), group_ids=np.repeat(np.arange(b), g),
                        record_indices=np.repeat(np.arange(10, 10 + b), g),
                        prompts=[f"p{i // g}" for i in range(b * g)],
                        golds=[str(i // g) for i in range(b * g)], metas=[{} for _ in range(b * g)], group_size=g,
                        truncated=0, rejected=0)
    parts = [batch.process_slice(i, 2) for i in range(2)]
    assert [p.golds for p in parts] == [["0", "0", "1", "1"], ["2", "2", "3", "3"]]
    np.testing.assert_array_equal(np.concatenate([p.input_ids for p in parts]), batch.input_ids)
    assert parts[1].input_ids.shape[1] == batch.input_ids.shape[1]  # the global prompt width
    np.testing.assert_array_equal(parts[1].record_indices, [12, 12, 13, 13])
    with pytest.raises(DataError, match="4 prompts does not split over 3 processes"):
        batch.process_slice(0, 3)
    with pytest.raises(DataError, match="not whole groups"):
        batch.select(np.array([1, 2]))


def test_row_helpers_in_one_process():
    mesh = make_mesh(MeshConfig(2, 2, 2))
    assert list(rows_by_process(mesh, 8)) == [0]
    np.testing.assert_array_equal(process_rows(mesh, 8), np.arange(8))
    check_row_split(mesh, 8, group_size=4)
    with pytest.raises(ConfigError, match="does not split over data x fsdp = 4"):
        check_row_split(mesh, 6)
    x = np.arange(16, dtype=np.float32).reshape(8, 2)
    glob = from_local_rows(x, mesh, 8)
    assert glob.shape == (8, 2) and len({s.index[0].indices(8) for s in glob.addressable_shards}) == 4
    np.testing.assert_array_equal(local_rows(glob), x)
    np.testing.assert_array_equal(gather(glob), x)
    np.testing.assert_array_equal(gather_local_rows(x, mesh, 8), x)
    assert per_process(np.float64(0.1)).tolist() == [0.1]
    assert all_processes(True) and not all_processes(False)
    assert reduce_metrics({"a/mean": 0.5, "a/failures": 2.0}, ("failures",)) == {"a/mean": 0.5, "a/failures": 2.0}


def test_train_command_reports_incomplete_settings_before_training(monkeypatch, capsys, tmp_path):
    from sspo_jax.cli import main

    monkeypatch.setenv("SSPO_NUM_PROCESSES", "2")
    for name in ("SSPO_COORDINATOR_ADDRESS", "SSPO_PROCESS_ID", "SSPO_DISTRIBUTED"):
        monkeypatch.delenv(name, raising=False)
    config = Path(__file__).resolve().parents[2] / "configs" / "tiny_sspo.yaml"
    rc = main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "incomplete multi-process settings (num_processes=2)" in err and "SSPO_PROCESS_ID" in err
    assert not (tmp_path / "run").exists()
