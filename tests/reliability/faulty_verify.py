"""A math verifier that misbehaves on purpose, for pool workers (picklable by reference).

The extracted answer chooses the fault: ``hang`` never returns, ``crash`` kills its worker process,
``raise`` raises; anything else goes to the real `verify_answer`.
"""

from __future__ import annotations

import os
import time

from sspo_jax.rewards.verify import verify_answer


def faulty_verify(prediction: str, gold: str, *args, **kwargs) -> float:
    if prediction == "hang":
        time.sleep(3600)
    if prediction == "crash":
        os._exit(3)
    if prediction == "raise":
        raise RuntimeError("the verifier broke")
    return verify_answer(prediction, gold, *args, **kwargs)


def hang_forever(*args) -> float:
    """Never returns (a verifier stuck in C code, as far as the pool can tell)."""
    time.sleep(3600)
    return 0.0
