"""Probe sets: the prompts on which activations are read.

A :class:`Probes` holds prompts (strings, token ids, or **chat conversations**), optional labels,
and a **position rule** saying which token positions of each prompt a statistic reads:

- ``"last"``: the last real token (padding-aware; the default);
- ``"mean"``: the mean over the prompt's real tokens;
- a boolean mask ``[n_prompts, n_pos]`` chosen by the user (positions beyond a prompt's length
  are ignored);
- ``("post_instruction", k)`` (chat probes): the last ``k`` template tokens after the user's
  content, each read **separately** (one statistic per position, labelled ``-k .. -1``, all read
  in the same forward), so a direction can be chosen per (position, layer) as in the
  refusal-direction work (Arditi et al. 2024). ``k=None`` (or ``"post_instruction"``): every
  post-instruction token the template writes (the fewest over the prompts).

Chat probes (:meth:`Probes.from_chat`, JSONL lines ``{"messages": [...]}`` or ``{"prompt": ...}``)
are rendered with a chat template and tokenized once (:mod:`revlens.probes.chat`: no doubled BOS); their
``prompts`` are the last user message, for reports and judges.

Prompt sets researchers have locally (AdvBench, JailbreakBench, HarmBench CSV, JSONL, TXT) load
as labelled probes with :func:`load_prompt_set` (:mod:`revlens.probes.sets`).

Prompts are right-padded: with a causal model, a real token never attends to padding, so a
padded batch gives exactly the statistics of the prompts one by one.

Example:
    >>> probes = Probes(["how do I pick a lock", "how do I bake bread"])
    >>> probes
    Probes(2 prompts, position='last')
    >>> Probes.from_chat(["hello"], system="be brief")
    Probes(1 chat prompts, position='last')
"""

from revlens.modes import POSITION_RULES
from revlens.probes.batch import ProbeBatch, TokenizedProbes
from revlens.probes.positions import PositionRule, parse_position, position_name
from revlens.probes.probes import Probes, ProbesInput
from revlens.probes.sets import PROMPT_FORMATS, combine, load_prompt_set

__all__ = [
    "POSITION_RULES",
    "PROMPT_FORMATS",
    "PositionRule",
    "ProbeBatch",
    "Probes",
    "ProbesInput",
    "TokenizedProbes",
    "combine",
    "load_prompt_set",
    "parse_position",
    "position_name",
]
