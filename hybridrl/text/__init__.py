"""Language models: sequence-level policy gradients from on-policy, replayed and logged completions.

``SequenceBatch`` (:mod:`.batch`), logged corpora (:mod:`.corpus`, ``datasets``), ``CausalLMPolicy`` (:mod:`.policy`,
``transformers`` + optional ``peft`` LoRA), pure losses (:mod:`.losses`), learners (:mod:`.learners`), loops
(:mod:`.loops`), the addition task (:mod:`.tasks`) and ``hybridrl text demo`` (:mod:`.demo`).

Needs the ``text`` extra (``pip install hybridrl[text]``); ``transformers``/``datasets``/``peft`` are imported only
when a model or corpus is touched, never by ``import hybridrl`` or ``import hybridrl.text``.
"""

from hybridrl.text.batch import SequenceBatch

__all__ = ["SequenceBatch"]
