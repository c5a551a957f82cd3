"""The names of the metrics the trainer itself writes to ``RUN_DIR/metrics.jsonl`` (one place:
the trainer, the docs glossary and the tests read them from here).

Stage functions add their own keys (``reward/<name>/*`` from the reward functions,
``dynamic_sampling/*``, ``advantage/*``, ``policy/*`` from the loss); docs/metrics.md explains
every key.
"""

REWARD_MEAN = "reward/mean"
REWARD_STD = "reward/std"
ACCURACY = "accuracy"
RESPONSE_LENGTH_MEAN = "response_length/mean"
RESPONSE_LENGTH_MAX = "response_length/max"
TRUNCATED_FRAC = "truncated_frac"
LR = "lr"
SKIPPED_UPDATES = "skipped_updates"
UPDATES = "updates"
CONSECUTIVE_SKIPPED_STEPS = "consecutive_skipped_steps"
TIME_GENERATE_AND_SCORE = "time/generate_and_score"
TIME_STATS = "time/stats"
TIME_UPDATE = "time/update"
TIME_STEP = "time/step"
TOKENS_PER_S = "tokens_per_s"
POLICY_PREFIX = "policy/"
EVAL_ACCURACY = "eval/accuracy"
EVAL_SAMPLED_ACCURACY = "eval/sampled_accuracy"
PROMPTS_TRUNCATED = "data/prompts_truncated"
PROMPTS_REJECTED = "data/prompts_rejected"

STEP_METRICS = (REWARD_MEAN, REWARD_STD, ACCURACY, RESPONSE_LENGTH_MEAN, RESPONSE_LENGTH_MAX, TRUNCATED_FRAC, LR,
                SKIPPED_UPDATES, UPDATES, CONSECUTIVE_SKIPPED_STEPS, TIME_GENERATE_AND_SCORE, TIME_STATS,
                TIME_UPDATE, TIME_STEP, TOKENS_PER_S, PROMPTS_TRUNCATED, PROMPTS_REJECTED)
"""Every key the trainer writes on each training step, whatever the algorithm."""
