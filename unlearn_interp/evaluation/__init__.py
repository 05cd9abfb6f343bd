"""Evaluation: multiple-choice accuracy exactly as lm-evaluation-harness scores it, the gap
ablation recovers, side-by-side generations, confidence (MaxLogit, entropy) and retain loss.

* ``mcq``: :func:`mcq_accuracy` ``mode="letter"`` is lm-evaluation-harness's zero-shot
  ``wmdp_*`` / ``mmlu_*`` task: prompt from :func:`data.mcq_prompt`, continuations `` A`` ..
  `` D`` tokenised the way its ``HFLM`` does (``_encode_pair``, BOS as the tokenizer adds it),
  highest log-likelihood wins. When every letter is one token (every common tokenizer) the four
  scores come from **one forward pass per question**, batched with left padding. Predictions
  equal the harness's item for item (tested). ``mode="continuation"``: each choice's text scored
  after a question prompt (sum of log-probs, and the byte-length-normalised ``acc_bytes``), for
  models that never learned the letter format (the model organism). :func:`accuracy_table` scores
  every variant on every task (the one loop); :func:`gap_recovered` is the recovery ratio.
* ``scoring``: :class:`Request`, :func:`encode_requests`, :func:`score_requests`: the harness's
  tokenisation and log-likelihoods; multi-token continuations run on a KV cache of their context
  (each context once), equal to the harness's one sequence per choice (tested).
* ``generation``: :func:`generate`, :func:`compare_generations`, :func:`chat_prompt`.
* ``confidence``: :func:`max_logit`, :func:`next_token_entropy`, :func:`retain_loss`.

Every scoring function takes ``fwd_hooks`` and also works inside ``Variant.applied(model)``::

    for v in (base, rmu, ablated):
        with v.applied(model):
            acc[v.name] = mcq_accuracy(model, items).accuracy
"""

from unlearn_interp.data import MMLU_CONTINUATION_TEMPLATE, QA_TEMPLATE
from unlearn_interp.evaluation.confidence import max_logit, next_token_entropy, retain_loss
from unlearn_interp.evaluation.generation import (
    Generation,
    chat_prompt,
    compare_generations,
    generate,
)
from unlearn_interp.evaluation.mcq import (
    MODES,
    TARGET_DELIMITER,
    MCQResult,
    accuracy_table,
    evaluate_variants,
    format_accuracy_table,
    gap_recovered,
    mcq_accuracy,
    mcq_requests,
    qa_prompt,
)
from unlearn_interp.evaluation.scoring import Request, encode_requests, score_requests

__all__ = [
    "MMLU_CONTINUATION_TEMPLATE",
    "MODES",
    "QA_TEMPLATE",
    "TARGET_DELIMITER",
    "Generation",
    "MCQResult",
    "Request",
    "accuracy_table",
    "chat_prompt",
    "compare_generations",
    "encode_requests",
    "evaluate_variants",
    "format_accuracy_table",
    "gap_recovered",
    "generate",
    "max_logit",
    "mcq_accuracy",
    "mcq_requests",
    "next_token_entropy",
    "qa_prompt",
    "retain_loss",
    "score_requests",
]
