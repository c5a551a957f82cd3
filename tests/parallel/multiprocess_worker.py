"""One process of the two-process CPU training job of test_parallel_multiprocess.py.

    python -m tests.parallel.multiprocess_worker MODEL_DIR RUN_DIR OUT_DIR STEPS

The process finds the others through the SSPO_* environment variables (the launcher sets
SSPO_COORDINATOR_ADDRESS, SSPO_NUM_PROCESSES and SSPO_PROCESS_ID), sees 4 CPU devices of its own
(8 in the job), trains the tiny config on a (2, 2, 2) mesh over all of them, and process 0 writes
the trained parameters (gathered from both processes) to OUT_DIR/params.npz and what it saw to
OUT_DIR/info.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str]) -> int:
    import faulthandler

    # a hung collective would wait forever: dump every thread's stack and exit instead
    faulthandler.dump_traceback_later(float(os.environ.get("SSPO_TEST_WORKER_TIMEOUT_S", "600")), exit=True)
    model_dir, run_dir, out_dir, steps = Path(argv[0]), Path(argv[1]), Path(argv[2]), int(argv[3])
    from sspo_jax.parallel import DistributedConfig, initialize

    assert initialize(DistributedConfig(initialization_timeout_s=60))  # everything from the environment

    import jax
    import numpy as np

    jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py

    from sspo_jax.parallel import gather
    from tests.parallel.mesh_fixtures import mesh_run_config

    cfg = mesh_run_config(model_dir, run_dir, steps)
    from sspo_jax.train import Trainer

    trainer = Trainer(cfg, echo=lambda s: None)
    summary = trainer.run()
    leaves = [gather(x) for x in jax.tree.leaves(trainer.state.params)]  # collective: every process
    batcher_state = trainer.batcher.state()
    trainer.close()
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savez(out_dir / "params.npz", *leaves)
        info = {"process_count": jax.process_count(), "device_count": jax.device_count(),
                "local_device_count": jax.local_device_count(), "start_step": trainer.start_step,
                "data_cursor": batcher_state, "summary_steps": summary["steps"]}
        (out_dir / "info.json").write_text(json.dumps(info))
    else:
        (out_dir / f"cursor-{jax.process_index()}.json").write_text(json.dumps(batcher_state))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
