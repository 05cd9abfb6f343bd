"""Prompt templates and the letter format of multiple-choice questions.

The letter-mode prompt (:func:`~unlearn_interp.data.mcq_prompt`) is lm-evaluation-harness's
zero-shot WMDP / MMLU prompt: :data:`MCQ_DESCRIPTION`, the question, one ``X. choice`` line per
choice (letters from :data:`LETTERS`), ``Answer:``. Continuation-mode prompts are
``prompt_template.format(question=..., subject=...)`` with one of the templates below.

    >>> QA_TEMPLATE.format(question="What is 2 + 2?")
    'Question: What is 2 + 2?\\nAnswer:'
"""

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# WMDP and MMLU questions all have four choices; lm-evaluation-harness's template is fixed to A-D.
N_CHOICES = 4

MCQ_DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"

# Continuation-mode prompt; the organism's pretraining text asks questions this way too.
QA_TEMPLATE = "Question: {question}\nAnswer:"
# lm-evaluation-harness's ``mmlu_*_continuation`` tasks (pass as ``prompt_template``).
MMLU_CONTINUATION_TEMPLATE = (
    "The following are questions (with answers) about {subject}.\n\n" + QA_TEMPLATE
)

__all__ = ["LETTERS", "MCQ_DESCRIPTION", "MMLU_CONTINUATION_TEMPLATE", "N_CHOICES", "QA_TEMPLATE"]
