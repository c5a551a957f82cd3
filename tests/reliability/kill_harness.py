"""Runs ``sspo_jax.cli.main`` in a subprocess that SIGKILLs itself at a chosen point (test harness only).

    python -m tests.reliability.kill_harness train --config ... --set ...

``SSPO_KILL_AT=PHASE:STEP`` chooses where the process dies (no hook when unset):

- ``generate:K``   inside step K's rollout, before generation returns (the stage `sample.sample_rollout`);
- ``update:K``     inside step K's update, after the jitted update ran but before the trainer
                   stores the new state (`Trainer.update_fn`);
- ``checkpoint:K`` while the checkpoint of step K is being written: Orbax has started the save
                   (files are being written under a temporary name) and has not finalised it.

The hook lives here only; the package has no test hooks. The dense test reward
``test_digit_share`` is registered so that a random model gets non-zero advantages.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

from sspo_jax.rewards import RewardOutput, register_reward


def digit_share(responses, golds, **_):
    """A dense reward a random model can earn: the share of digit characters."""
    return RewardOutput(np.array([sum(c.isdigit() for c in r) / max(len(r), 1) for r in responses], np.float32))


register_reward("test_digit_share", digit_share, overwrite=True)


def _die(where: str) -> None:
    sys.stdout.write(f"KILLED {where}\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(spec: str) -> None:
    from sspo_jax.train import trainer as trainer_mod
    from sspo_jax.train.checkpoint import Checkpointer

    phase, step = spec.split(":")
    step = int(step)
    current = {"step": 0}
    Trainer = trainer_mod.Trainer

    real_step = Trainer.step

    def step_hook(self, k):
        current["step"] = k
        return real_step(self, k)

    Trainer.step = step_hook

    if phase == "generate":
        from sspo_jax.train import sample

        real_sample = sample.sample_rollout

        def sample_rollout(*args, **kwargs):
            if current["step"] == step:
                _die(f"generate {step}")
            return real_sample(*args, **kwargs)

        sample.sample_rollout = sample_rollout
    elif phase == "update":
        real_init = Trainer.__init__

        def init(self, *args, **kwargs):
            real_init(self, *args, **kwargs)
            real_update = self.update_fn

            def update(state, batch):
                out = real_update(state, batch)
                if current["step"] == step:
                    import jax

                    jax.block_until_ready(out)
                    _die(f"update {step}")
                return out

            self.update_fn = update

        Trainer.__init__ = init
    elif phase == "checkpoint":
        import orbax.checkpoint as ocp

        def save(self, k, state, meta):
            if k != step:
                return real_save(self, k, state, meta)
            # the same call as Checkpointer.save, but the process dies before the save is finalised
            self.manager.save(k, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)
            _die(f"checkpoint {step}")

        real_save = Checkpointer.save
        Checkpointer.save = save
    else:
        raise SystemExit(f"unknown SSPO_KILL_AT phase {phase!r}")


def main() -> int:
    spec = os.environ.get("SSPO_KILL_AT")
    if spec:
        install(spec)
    from sspo_jax.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
