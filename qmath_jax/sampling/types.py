"""What samplers return, and the interface every sampler offers.

The real sampler (``qmath_jax.sampling.sampler.Sampler``), the TIR loop and the test doubles
all speak this interface, so evaluation, rejection sampling and RL take any of them.
"""

import dataclasses
from collections.abc import Sequence
from typing import Protocol

FINISH_STOP = "stop"      # an end-of-sequence id or a stop string ended the completion
FINISH_LENGTH = "length"  # max_new_tokens was reached


@dataclasses.dataclass
class Completion:
  """One sampled continuation of one prompt.

  Attributes:
    text: decoded continuation, cut just before the stop string (the stop string is in `stop`).
    token_ids: the sampled token ids, including the one that completed the stop string.
    logprobs: fp32 log-probability of each token in `token_ids` under the sampling model.
    finish_reason: FINISH_STOP or FINISH_LENGTH.
    stop: the stop string or end-of-sequence token text that ended it, else None.
    model_mask: 1 for each token the model sampled, 0 for tokens it did not (interpreter
      output spliced in by the TIR loop), so losses can leave them out; None: all sampled.
  """
  text: str
  token_ids: list[int]
  logprobs: list[float]
  finish_reason: str
  stop: str | None = None
  model_mask: list[int] | None = None


class SamplerLike(Protocol):
  """Anything that generates completions for a batch of prompt strings."""

  def generate(self, prompts: Sequence[str], n: int = 1, *, temperature: float = 0.0,
               top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 256,
               stop: Sequence[str] = (), seed: int = 0) -> list[list[Completion]]:
    """Returns, per prompt, `n` completions."""
    ...
