"""Frozen configuration dataclasses for the algorithm core.

One `AlgorithmConfig` describes a policy-optimization algorithm completely: how importance ratios
are formed (token, subsentence or sequence level), how they are clipped (asymmetric epsilons,
entropy scaling, dual clip), how per-token losses are aggregated, the KL penalty, the advantage
estimator and the update schedule. The presets in `presets.py` are instances of it. Every field
is validated on construction; an impossible value raises `ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

Granularity = Literal["subsentence", "token", "sequence"]
RatioForm = Literal["sg", "broadcast"]
EntropyNorm = Literal["ratio", "zscore", "none", "quantile"]
LossAggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
KLEstimator = Literal["k1", "k2", "k3"]
AdvantageEstimator = Literal["group_zscore", "group_mean", "rloo", "gae", "sequence_baseline"]
CriticKind = Literal["none", "token", "prompt"]
PolicyLossKind = Literal["ppo_clip", "gmpo", "cispo", "clip_cov", "kl_cov"]
DynamicSamplingMetric = Literal["correct", "reward"]

GRANULARITIES = ("subsentence", "token", "sequence")
RATIO_FORMS = ("sg", "broadcast")
ENTROPY_NORMS = ("ratio", "zscore", "none", "quantile")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
ADVANTAGE_ESTIMATORS = ("group_zscore", "group_mean", "rloo", "gae", "sequence_baseline")
CRITIC_KINDS = ("none", "token", "prompt")
POLICY_LOSS_KINDS = ("ppo_clip", "gmpo", "cispo", "clip_cov", "kl_cov")
DYNAMIC_SAMPLING_METRICS = ("correct", "reward")

# Default delimiters (ALGORITHMS.md 1a): ASCII clause/sentence punctuation, newline, full-width forms.
DEFAULT_DELIMITERS = ",.;:!?\n\uff0c\u3002\uff1b\uff1a\uff01\uff1f"
# Sentence-only delimiters: '. ! ? \n' and full-width '。！？'.
SENTENCE_DELIMITERS = ".!?\n\u3002\uff01\uff1f"
# A suggested `SegmentationConfig.abbreviations` set (off by default).
COMMON_ABBREVIATIONS = ("e.g.", "i.e.", "cf.", "vs.", "w.r.t.", "approx.", "resp.")


from sspo_jax.errors import ConfigError  # noqa: E402 - the one hierarchy (a leaf module, no imports)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {list(allowed)}")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class SegmentationConfig:
    """How a response is cut into subsentences (ALGORITHMS.md 1a) [project choice].

    Attributes:
      granularity: ``subsentence`` (default: segments end at delimiter tokens), ``token`` (every
        token its own segment: GRPO's ratio) or ``sequence`` (one segment per response: GSPO's).
      delimiters: characters that make a token a delimiter when its decoded text contains one.
      sentence_only: use only sentence-ending delimiters ``. ! ? \\n 。！？`` (overrides `delimiters`).
      word_boundary: (default on; a bug fix of issue 20) a delimiter character counts only when the
        next character of the token's text is not a letter or digit, so identifier and URL pieces
        such as ``.get``, ``.com`` or ``,b`` are no delimiters; off: any delimiter character counts.
      eos_joins_last: (default on; a bug fix of issue 20) a special token (EOS) never opens a
        segment: after a final ``.`` it joins the last segment instead of becoming a segment of
        its own (an EOS-only response is still one segment); off: the old behaviour.
      protect_decimals: a ``.`` or ``,`` token between two digit tokens ("3 . 1 4") is no boundary.
      protect_list_markers: (default off) a bare ``.`` or ``)`` token after a run of digit tokens
        that starts a line (or the response) and before a token that starts with a space (the
        ``1.`` of ``\\n1. First``) is no boundary.
      abbreviations: (default none) a bare ``.`` token closing one of these abbreviations is no
        boundary; the token before it must read as the abbreviation's last piece (``.g`` of
        ``e.g.``, or the whole word such as `` vs``); `COMMON_ABBREVIATIONS` is a suggested set.
      protect_math: (default off) no boundary inside inline math ``$...$`` or ``\\(...\\)``: a
        delimiter token is no boundary when math is open both before and after it (a running
        parity of ``$`` runs and depth of ``\\(``/``\\)``, reset by every newline token).
      min_segment_len: a shorter segment merges into the previous one (the first into the next);
        applied after all the rules above.
      max_segment_len: longer segments are split into equal contiguous pieces; None = no limit.
        Must be at least ``2 * min_segment_len`` so that the pieces respect the minimum.

    The table of token features (`segments.build_delimiter_table`) depends on `delimiters`,
    `sentence_only`, `word_boundary` and `abbreviations`: build it with the same config.
    """

    granularity: Granularity = "subsentence"
    delimiters: str = DEFAULT_DELIMITERS
    sentence_only: bool = False
    word_boundary: bool = True
    eos_joins_last: bool = True
    protect_decimals: bool = True
    protect_list_markers: bool = False
    abbreviations: tuple[str, ...] = ()
    protect_math: bool = False
    min_segment_len: int = 1
    max_segment_len: Optional[int] = None

    def __post_init__(self) -> None:
        _choice("segmentation.granularity", self.granularity, GRANULARITIES)
        if isinstance(self.abbreviations, (list, str)):  # YAML lists; a lone string is one abbreviation
            object.__setattr__(self, "abbreviations",
                               (self.abbreviations,) if isinstance(self.abbreviations, str) else tuple(self.abbreviations))
        _check(isinstance(self.abbreviations, tuple) and all(
            isinstance(a, str) and len(a) >= 2 and a.endswith(".") for a in self.abbreviations),
            f"segmentation.abbreviations must be a list of strings ending with '.', e.g. ['e.g.', 'i.e.'], "
            f"got {self.abbreviations!r}")
        _check(isinstance(self.min_segment_len, int) and self.min_segment_len >= 1,
               f"segmentation.min_segment_len must be an integer >= 1, got {self.min_segment_len!r}")
        if self.max_segment_len is not None:
            _check(isinstance(self.max_segment_len, int) and self.max_segment_len >= 1,
                   f"segmentation.max_segment_len must be None or an integer >= 1, got {self.max_segment_len!r}")
            _check(self.max_segment_len >= 2 * self.min_segment_len or self.min_segment_len == 1,
                   f"segmentation.max_segment_len={self.max_segment_len} must be >= 2 * min_segment_len "
                   f"({2 * self.min_segment_len}) so that split pieces are not shorter than the minimum")
        _check(len(self.active_delimiters) > 0, "segmentation.delimiters must not be empty")

    @property
    def active_delimiters(self) -> str:
        """The delimiter characters in force (the sentence set when `sentence_only`)."""
        return SENTENCE_DELIMITERS if self.sentence_only else self.delimiters


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
    """Complete description of one policy-optimization algorithm (see ALGORITHMS.md).

    Identity:
      name: the preset's name (``custom`` for a hand-built config; without `preset`, a preset name here
        selects that preset); stored in the run's summary and config.

    Ratio and clipping:
      eps_low, eps_high: PPO clip range ``[1 - eps_low, 1 + eps_high]`` (before entropy scaling).
      dual_clip: c > 1 caps the loss of negative-advantage tokens at ``-c * A``; None disables it.
      ratio_form: ``sg`` applies the unit (segment/sequence) log-ratio per token in the GSPO-token
        form ``exp(sg[L] + logp - sg[logp])``; ``broadcast`` uses ``exp(L)`` with the gradient
        through the unit mean (GSPO). Always equal in value. Equal in gradient exactly when the
        advantage is constant inside each unit (every aggregation mode weighs the tokens of one
        response equally): inside the clamp the two chain rules agree, and past it (|L| at the
        clamp) both give exactly 0, because the sg form stops its gradient there as verl does.
        With per-token advantages varying inside a unit they differ.
      log_ratio_clamp: the unit mean log-ratio L is clamped to ``[-c, c]`` before ``exp``; a unit
        at the clamp passes no gradient (either form).
      segmentation: how units (segments) are formed; ``token`` gives GRPO, ``sequence`` GSPO.

    Entropy-scaled bounds (SSPO, ALGORITHMS.md 1c) [project choice]:
      entropy_alpha: 0 turns scaling off; g = clip(1 + alpha * (h - 1), g_min, g_max).
      entropy_g_min, entropy_g_max: range of the scale g.
      entropy_norm: ``ratio`` h = Hbar / mean(Hbar); ``zscore`` h - 1 := (Hbar - mean) / std;
        ``none`` h = Hbar (raw nats); ``quantile`` h - 1 := 2 q - 1 with q in [0, 1] the quantile
        of Hbar among the global batch's segments, read from the fixed-bin histogram of
        `clipping.EntropyStats` (robust to outliers; exact under micro-batching).
      entropy_scale_low: True (default): both bounds scale, ``e_lo = eps_low * g``; False: entropy
        only widens the upper bound while low entropy tightens both: ``e_lo = eps_low * min(g, 1)``,
        ``e_hi = eps_high * g``.

    Dual-level clipping (issue 20) [project choice]:
      token_guard: also clip each token against its own ratio ``w_t = exp(logp_t - logp_old_t)``:
        a token with ``A > 0 and w_t > 1 + e_hi_tok`` or ``A < 0 and w_t < 1 - e_lo_tok`` has its
        gradient stopped (its loss value is unchanged) even when its unit's ratio is inside the
        bounds. Off by default, on in the ``sspo`` preset (with ``entropy_norm="quantile"`` and
        ``entropy_scale_low=False``, as configs/compare/sspo_defaults.yaml decided); needs
        ``ratio_form="sg"``. At token granularity with the default guard bounds it never fires
        beyond the ordinary clip (GRPO is unchanged).
      token_guard_eps_low, token_guard_eps_high: the guard's bounds. None (default): the token's
        own unit bounds ``e_lo_k``, ``e_hi_k`` (entropy-scaled like the unit's clip); a float: a
        fixed token-level epsilon (not entropy-scaled).

    Policy objective (which surrogate replaces the PPO clip; each in its own module):
      policy_loss_kind: ``ppo_clip`` (default: the clipped surrogate above), ``gmpo`` (arXiv
        2507.20673, `gmpo.py`: token log-ratios clipped in log space to ``[-eps_low, eps_high]``
        with the advantage's sign, then ``exp`` of their unit mean; the loss is ``-A * that``),
        ``cispo`` (MiniMax-M1 arXiv 2506.13585, `cispo.py`: ``-sg(clip(r, 1-eps_low, 1+eps_high))
        * A * logp``, no token dropped; ``eps_low = 1`` means no lower bound), ``clip_cov`` or
        ``kl_cov`` (arXiv 2505.22617, `covariance.py`; token granularity only).
      cov_clip_frac: Clip-Cov's r: at most ``max(floor(r * N), 1)`` of the N valid tokens, drawn at
        random (needs ``rng``) among those whose covariance lies in ``(cov_clip_low,
        cov_clip_high)`` and whose PPO clip is inactive, lose their loss and gradient.
      cov_clip_low, cov_clip_high: Clip-Cov's covariance band (paper and verl: 1 and 5).
      kl_cov_frac: KL-Cov's k: the ``max(floor(k * N), 1)`` valid tokens of largest covariance get
        ``kl_cov_coef * |logp - old_logp|`` added (paper: 2e-3 for Qwen2.5-7B).
      kl_cov_coef: KL-Cov's penalty weight (paper and verl: 1).
      entropy_mask_percentile: "Beyond the 80/20 rule" (arXiv 2506.01939, `entropy_mask.py`): the
        policy-gradient term is kept only on tokens whose old-policy entropy is at or above this
        percentile (80 keeps the top 20%) of the valid tokens of the global batch; the others
        contribute 0 (the denominator is unchanged). None: off. Any `policy_loss_kind`.

    Aggregation and KL:
      loss_agg_mode: ``token-mean``, ``seq-mean-token-mean``, ``seq-mean-token-sum`` or
        ``seq-mean-token-sum-norm`` (see `aggregation.py`).
      loss_norm_constant: the Dr. GRPO constant of ``seq-mean-token-sum-norm``. None: the trainer
        uses ``sampling.max_new_tokens`` (the maximum generation length); the pure functions use
        the width T of the arrays they are given.
      kl_beta: weight of the per-token KL to the reference policy in the loss (0 = off).
      kl_estimator: k1 | k2 | k3 (see `kl.py`: k3 as a loss, GRPO's choice, has on-policy the
        expected gradient of the forward KL(pi_ref || pi), which equals the reverse KL's to first
        order in log(pi / pi_ref); k2's is exactly the reverse KL's).
      kl_clamp: optional bound on the per-token KL value (None = no bound).

    Advantages and critic:
      advantage: group_zscore | group_mean | rloo | gae | sequence_baseline.
      adv_eps: the epsilon added to the group std.
      gae_gamma, gae_lambda: discount and GAE lambda (``advantage=gae``).
      whiten_advantages: normalise GAE advantages to mean 0, std 1 over valid tokens.
      kl_in_reward_beta: the KL penalty in the per-token reward of GAE (InstructGPT; verl's
        ``algorithm.use_kl_in_reward`` with ``kl_ctrl.kl_coef``): each response token's reward is
        ``-kl_in_reward_beta * KL_t`` (plus the outcome reward on the last token), with KL_t of the
        behaviour policy (the stats pass's ``old_logp``) to the reference at the sampled token.
        0 = off; > 0 needs ``advantage='gae'``. Independent of `kl_beta` (the KL in the loss).
      kl_in_reward_estimator: the KL_t of `kl_in_reward_beta`: ``k1`` (default: ``log pi_old -
        log pi_ref``, InstructGPT's and verl's default ``kl``; its expectation is the KL and the sum
        over a response is the sequence log-ratio), ``k2`` or ``k3`` (>= 0 per token). A reward is
        not differentiated, so only the estimator's value matters here (see `kl.py`).
      critic: none | token (PPO value model) | prompt (SPPO scalar critic).
      critic_warmup_steps: the first K trainer steps update only the critic: the policy's
        parameters and optimizer state stay unchanged (verl's ``trainer.critic_warmup``), and the
        policy's learning-rate schedule starts at its first update. 0 = off; > 0 needs a critic.
      value_clip: PPO value clip range c_v.
      value_coef: weight of the value loss.

    Sampling and schedule (used by the trainer):
      group_size: responses sampled per prompt (G).
      dynamic_sampling: DAPO's filter of groups whose rewards are all equal.
      dynamic_sampling_metric: the per-response score that must vary inside a group for dynamic
        sampling to keep it: ``correct`` (default: the correctness reward ``eval.reward``, as
        verl's DAPO recipe filters on accuracy, so length shaping alone never keeps a group whose
        responses are all right or all wrong) or ``reward`` (the total reward, shaping included).
      max_sampling_rounds: cap on generation rounds used to fill a batch.
      overlong_buffer_frac: DAPO's soft overlong penalty with L_cache = frac * max response length
        (tokens; None = off; the DAPO paper uses 4096 of 20480 = 0.2).
      overlong_penalty_factor: weight of the overlong penalty.
      overlong_reward_span: ``R_max - R_min`` of the task reward that the overlong penalty is
        weighed against; the penalty ``R_len`` in [-1, 0] is multiplied by
        ``overlong_penalty_factor * overlong_reward_span / 2``. DAPO's rewards are +-1 (span 2:
        the paper's penalty); this project's correctness rewards are 0/1, so the default 1 gives
        the penalty the paper's weight relative to correctness (R_len in [-0.5, 0] at factor 1).
      mask_truncated: drop truncated responses from the loss.
      ppo_epochs: passes over one rollout batch.
      num_minibatches: minibatches (optimizer steps) per pass over one rollout batch.
    """

    name: str = "custom"
    # ratio and clipping
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: Optional[float] = None
    ratio_form: RatioForm = "sg"
    log_ratio_clamp: float = 20.0
    segmentation: SegmentationConfig = dataclasses.field(default_factory=SegmentationConfig)
    # entropy-scaled bounds
    entropy_alpha: float = 0.0
    entropy_g_min: float = 0.5
    entropy_g_max: float = 2.0
    entropy_norm: EntropyNorm = "ratio"
    entropy_scale_low: bool = True
    # dual-level clipping
    token_guard: bool = False
    token_guard_eps_low: Optional[float] = None
    token_guard_eps_high: Optional[float] = None
    # policy objective
    policy_loss_kind: PolicyLossKind = "ppo_clip"
    cov_clip_frac: float = 2e-4
    cov_clip_low: float = 1.0
    cov_clip_high: float = 5.0
    kl_cov_frac: float = 2e-3
    kl_cov_coef: float = 1.0
    entropy_mask_percentile: Optional[float] = None
    # aggregation and KL
    loss_agg_mode: LossAggMode = "token-mean"
    loss_norm_constant: Optional[float] = None
    kl_beta: float = 0.0
    kl_estimator: KLEstimator = "k3"
    kl_clamp: Optional[float] = None
    # advantages and critic
    advantage: AdvantageEstimator = "group_zscore"
    adv_eps: float = 1e-6
    gae_gamma: float = 1.0
    gae_lambda: float = 1.0
    whiten_advantages: bool = True
    kl_in_reward_beta: float = 0.0
    kl_in_reward_estimator: KLEstimator = "k1"
    critic: CriticKind = "none"
    critic_warmup_steps: int = 0
    value_clip: float = 0.5
    value_coef: float = 1.0
    # sampling and schedule
    group_size: int = 8
    dynamic_sampling: bool = False
    dynamic_sampling_metric: DynamicSamplingMetric = "correct"
    max_sampling_rounds: int = 3
    overlong_buffer_frac: Optional[float] = None
    overlong_penalty_factor: float = 1.0
    overlong_reward_span: float = 1.0
    mask_truncated: bool = False
    ppo_epochs: int = 1
    num_minibatches: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.segmentation, dict):  # allow nested dicts from YAML
            object.__setattr__(self, "segmentation", SegmentationConfig(**self.segmentation))
        _check(isinstance(self.segmentation, SegmentationConfig),
               f"segmentation must be a SegmentationConfig, got {type(self.segmentation).__name__}")
        _choice("policy_loss_kind", self.policy_loss_kind, POLICY_LOSS_KINDS)
        if self.policy_loss_kind == "cispo":  # CISPO's weight is >= 0: eps_low = 1 removes the lower bound (the paper)
            _check(0.0 <= self.eps_low <= 1.0, f"eps_low={self.eps_low} must be in [0, 1] for policy_loss_kind='cispo'")
        else:
            _check(0.0 <= self.eps_low < 1.0, f"eps_low={self.eps_low} must be in [0, 1): the lower clip bound 1 - eps_low must stay positive")
        _check(self.eps_high >= 0.0, f"eps_high={self.eps_high} must be >= 0")
        _check(self.dual_clip is None or self.dual_clip > 1.0, f"dual_clip={self.dual_clip} must be None or > 1")
        _choice("ratio_form", self.ratio_form, RATIO_FORMS)
        _check(self.log_ratio_clamp > 0, f"log_ratio_clamp={self.log_ratio_clamp} must be > 0")
        _check(self.entropy_alpha >= 0, f"entropy_alpha={self.entropy_alpha} must be >= 0")
        _check(0 < self.entropy_g_min <= 1 <= self.entropy_g_max,
               f"entropy bounds need 0 < entropy_g_min <= 1 <= entropy_g_max, got g_min={self.entropy_g_min}, g_max={self.entropy_g_max}")
        if self.entropy_alpha > 0:
            _check(self.eps_low * self.entropy_g_max < 1.0,
                   f"eps_low * entropy_g_max = {self.eps_low} * {self.entropy_g_max} must be < 1 "
                   "(the scaled lower bound 1 - eps_low * g would be <= 0); lower eps_low or entropy_g_max")
        _choice("entropy_norm", self.entropy_norm, ENTROPY_NORMS)
        _check(0 < self.cov_clip_frac <= 1, f"cov_clip_frac={self.cov_clip_frac} must be in (0, 1]")
        _check(self.cov_clip_low < self.cov_clip_high,
               f"cov_clip_low={self.cov_clip_low} must be < cov_clip_high={self.cov_clip_high}")
        _check(0 < self.kl_cov_frac <= 1, f"kl_cov_frac={self.kl_cov_frac} must be in (0, 1]")
        _check(self.kl_cov_coef >= 0, f"kl_cov_coef={self.kl_cov_coef} must be >= 0")
        _check(self.entropy_mask_percentile is None or 0 <= self.entropy_mask_percentile < 100,
               f"entropy_mask_percentile={self.entropy_mask_percentile!r} must be None or in [0, 100)")
        if self.policy_loss_kind in ("clip_cov", "kl_cov"):
            _check(self.segmentation.granularity == "token",
                   f"policy_loss_kind={self.policy_loss_kind!r} is token-level: needs segmentation.granularity='token'")
        if self.policy_loss_kind not in ("ppo_clip", "clip_cov"):
            _check(self.dual_clip is None,
                   f"dual_clip={self.dual_clip} has no meaning for policy_loss_kind={self.policy_loss_kind!r}; set it to None")
        if self.policy_loss_kind != "ppo_clip":
            _check(not self.token_guard, f"token_guard applies to policy_loss_kind='ppo_clip' only, got {self.policy_loss_kind!r}")
        if self.policy_loss_kind == "kl_cov":
            _check(self.entropy_alpha == 0,
                   f"entropy_alpha={self.entropy_alpha} has no clip bounds to scale with policy_loss_kind='kl_cov'; set it to 0")
        if self.token_guard:
            _check(self.ratio_form == "sg",
                   f"token_guard needs ratio_form='sg' (it stops the gradient of single tokens), got {self.ratio_form!r}")
        else:
            _check(self.token_guard_eps_low is None and self.token_guard_eps_high is None,
                   "token_guard_eps_low/high are set but token_guard=False: set token_guard=True or drop them")
        _check(self.entropy_scale_low or self.policy_loss_kind == "ppo_clip",
               f"entropy_scale_low=False applies to policy_loss_kind='ppo_clip' only, got {self.policy_loss_kind!r}")
        _check(self.token_guard_eps_low is None or 0.0 <= self.token_guard_eps_low < 1.0,
               f"token_guard_eps_low={self.token_guard_eps_low} must be None or in [0, 1)")
        _check(self.token_guard_eps_high is None or self.token_guard_eps_high >= 0.0,
               f"token_guard_eps_high={self.token_guard_eps_high} must be None or >= 0")
        _choice("loss_agg_mode", self.loss_agg_mode, LOSS_AGG_MODES)
        _check(self.loss_norm_constant is None or self.loss_norm_constant > 0,
               f"loss_norm_constant={self.loss_norm_constant} must be None or > 0")
        _check(self.kl_beta >= 0, f"kl_beta={self.kl_beta} must be >= 0")
        _choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _check(self.kl_clamp is None or self.kl_clamp > 0, f"kl_clamp={self.kl_clamp} must be None or > 0")
        _choice("advantage", self.advantage, ADVANTAGE_ESTIMATORS)
        _check(self.adv_eps > 0, f"adv_eps={self.adv_eps} must be > 0")
        _check(0 <= self.gae_gamma <= 1 and 0 <= self.gae_lambda <= 1,
               f"gae_gamma={self.gae_gamma} and gae_lambda={self.gae_lambda} must be in [0, 1]")
        _check(self.kl_in_reward_beta >= 0, f"kl_in_reward_beta={self.kl_in_reward_beta} must be >= 0")
        _choice("kl_in_reward_estimator", self.kl_in_reward_estimator, KL_ESTIMATORS)
        _choice("critic", self.critic, CRITIC_KINDS)
        _check(isinstance(self.critic_warmup_steps, int) and self.critic_warmup_steps >= 0,
               f"critic_warmup_steps={self.critic_warmup_steps!r} must be an integer >= 0")
        _check(self.value_clip > 0, f"value_clip={self.value_clip} must be > 0")
        _check(self.value_coef >= 0, f"value_coef={self.value_coef} must be >= 0")
        _check(isinstance(self.group_size, int) and self.group_size >= 1,
               f"group_size={self.group_size!r} must be an integer >= 1 (responses per prompt)")
        _check(isinstance(self.max_sampling_rounds, int) and self.max_sampling_rounds >= 1,
               f"max_sampling_rounds={self.max_sampling_rounds!r} must be an integer >= 1")
        _check(self.overlong_buffer_frac is None or 0 < self.overlong_buffer_frac < 1,
               f"overlong_buffer_frac={self.overlong_buffer_frac!r} must be None or in (0, 1)")
        _check(self.overlong_penalty_factor >= 0, f"overlong_penalty_factor={self.overlong_penalty_factor} must be >= 0")
        _check(self.overlong_reward_span > 0,
               f"overlong_reward_span={self.overlong_reward_span} must be > 0 (R_max - R_min of the task reward)")
        _choice("dynamic_sampling_metric", self.dynamic_sampling_metric, DYNAMIC_SAMPLING_METRICS)
        _check(isinstance(self.ppo_epochs, int) and self.ppo_epochs >= 1, f"ppo_epochs={self.ppo_epochs!r} must be an integer >= 1")
        _check(isinstance(self.num_minibatches, int) and self.num_minibatches >= 1,
               f"num_minibatches={self.num_minibatches!r} must be an integer >= 1")
        # combinations
        if self.advantage == "gae":
            _check(self.critic == "token", f"advantage='gae' needs critic='token' (a value per token), got critic={self.critic!r}")
        if self.advantage == "sequence_baseline":
            _check(self.critic == "prompt", f"advantage='sequence_baseline' needs critic='prompt', got critic={self.critic!r}")
        if self.kl_in_reward_beta > 0:
            _check(self.advantage == "gae", f"kl_in_reward_beta={self.kl_in_reward_beta} puts the KL into per-token "
                   f"rewards, which only advantage='gae' reads, got advantage={self.advantage!r}")
        if self.critic_warmup_steps > 0:
            _check(self.critic != "none", f"critic_warmup_steps={self.critic_warmup_steps} warms up a critic, "
                   "but critic='none'")
        if self.advantage in ("group_zscore", "group_mean", "rloo") and self.dynamic_sampling:
            _check(self.group_size >= 2, "dynamic_sampling needs group_size >= 2 (it drops groups whose rewards are all equal)")

    @property
    def uses_entropy(self) -> bool:
        """Whether the loss needs the old policy's per-token entropy."""
        return self.entropy_alpha > 0 or self.entropy_mask_percentile is not None

    @property
    def needs_ref_logp(self) -> bool:
        """Whether the stats pass must compute the reference policy's log-probs: a KL in the loss
        (``kl_beta > 0``) or in the reward (``kl_in_reward_beta > 0``)."""
        return self.kl_beta > 0 or self.kl_in_reward_beta > 0

    @property
    def uses_rng(self) -> bool:
        """Whether the loss needs a PRNG key (``policy_loss(..., rng=key)``): Clip-Cov's random pick."""
        return self.policy_loss_kind == "clip_cov"

    def replace(self, **changes) -> "AlgorithmConfig":
        """A copy with `changes` applied (validated). Nested: ``segmentation={'granularity': 'token'}``."""
        seg = changes.get("segmentation")
        if isinstance(seg, dict):
            changes["segmentation"] = dataclasses.replace(self.segmentation, **seg)
        return dataclasses.replace(self, **changes)
