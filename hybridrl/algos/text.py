"""Registers the causal-LM learners of :mod:`hybridrl.text.learners` (grpo, rloo, topr, dpo, text_pg, text_pair).

Importing it needs torch only; transformers is imported when a learner is built."""

import hybridrl.text.learners  # noqa: F401
