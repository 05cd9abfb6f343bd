"""The organism's questions with every value of the attribute as a choice, for value probes.

A four-choice MCQ asks "which of these four?"; a value probe asks "which of the attribute's
values?". :func:`value_items` turns each fact of a domain into the same question (same text,
same subject, so the same scored context) whose choices are all the values the world uses for
that attribute, in the world's order; :func:`fact_entities` gives each question's entity, the
group probes keep on one side of a train/test split. Both list the facts in
``world.facts_in(domain)`` order, the order of ``org.hazardous_mcq`` / ``org.benign_mcq``.

    >>> items = value_items(org, "hazardous")                           # doctest: +SKIP
    >>> len(items[0].choices) == len(org.world.attribute(org.world.facts_in("hazardous")[0]).values)  # doctest: +SKIP
    True
"""

from __future__ import annotations

from unlearn_interp import data
from unlearn_interp.organism.cache import Organism
from unlearn_interp.organism.world import question


def value_items(org: Organism, domain: str = "hazardous") -> list[data.MCQItem]:
    """One question per fact of ``domain``, its choices every value of the fact's attribute.

    Attributes of one domain can have value sets of different sizes (the demo's benign months);
    a probe that needs equal widths then refuses them (``question_set`` says so).
    """
    world = org.world
    items = []
    for fact in world.facts_in(domain):
        values = list(world.attribute(fact).values)
        subject = world.kind(fact.kind).subject
        items.append(data.MCQItem(question(world, fact), values, values.index(fact.value), subject))
    return items


def fact_entities(org: Organism, domain: str = "hazardous") -> list[str]:
    """The entity of each fact of ``domain``, in the order of :func:`value_items` and the MCQs."""
    return [fact.entity for fact in org.world.facts_in(domain)]
