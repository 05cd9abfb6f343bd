"""The topic rule: which texts (paragraphs, questions) are about biology or chemistry.

A text belongs to a topic when it has enough distinct words of the topic's lexicon and more than
of the other topic's (:func:`topic_of`); questions need fewer (:data:`MIN_HITS_QUESTION`) than
paragraphs (:data:`MIN_HITS_PARAGRAPH`). "Unrelated" means none of the topic's words at all.

    >>> topic_of("Mitochondria are organelles of the cell.", min_hits=1)
    'biology'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError


def lexicon(words: str) -> frozenset[str]:
    """A set of words written as one whitespace-separated string.

    >>> sorted(lexicon("acid  base"))
    ['acid', 'base']
    """
    return frozenset(words.split())


TOPICS = ("biology", "chemistry")

# Words that mark a text as biology (with medicine, anatomy, genetics, virology) or chemistry.
# A word also matches with a plural "s"/"es". Words shared by both topics (oxygen, energy,
# membrane, nucleus) or common in everyday text (base, bond, solution, lead) are left out.
BIOLOGY_WORDS = lexicon(
    """
    biology biological biologist organism cell cellular cytoplasm organelle mitochondria
    mitochondrion mitochondrial chloroplast ribosome gene genetic genetics genome genotype
    phenotype allele trait recessive autosomal heredity hereditary dna rna chromosome
    mitosis meiosis mutation evolution evolutionary species taxonomy phylum genus protein
    enzyme hormone insulin metabolism photosynthesis virus viral virology hiv hepatitis
    bacteria bacterium bacterial microbe microbial pathogen infection infected infectious
    epidemic epidemiology disease vaccine vaccination immune antibody antigen lymphocyte
    blood artery vein aorta capillary lung kidney liver stomach intestine digestive brain
    neuron neural nerve nervous spinal muscle skeletal bone tissue organ anatomy anatomical
    physiology physiological medical medicine clinical patient symptom diagnosis therapy
    surgery tumor tumour cancer syndrome autism pregnancy fetus embryo embryonic sperm ovary
    uterus reproduction reproductive fertilization offspring plant seed flower pollen
    pollination fungi fungus algae moss fern animal mammal reptile amphibian bird fish
    insect worm vertebrate invertebrate predator prey habitat ecosystem ecology herbivore
    carnivore
    """
)
CHEMISTRY_WORDS = lexicon(
    """
    chemistry chemical chemist atom atomic molecule molecular compound isotope nuclide
    electron proton neutron ion ionic cation anion covalent valence orbital acid acidic
    alkali alkaline alkane alkene hydrocarbon ph oxide hydroxide oxidation redox reactant
    catalyst catalysis solute molar molarity mole precipitate titration stoichiometry
    electrolysis electrochemical exothermic endothermic enthalpy polymer alloy
    halogen salt hydrogen helium lithium sodium potassium magnesium calcium
    aluminium aluminum chlorine fluorine bromine iodine sulfur sulphur phosphorus nitrogen
    carbon silicon zinc uranium radium caesium cesium beryllium argon neon boron
    """
)
# A text belongs to a topic when it has this many of the topic's words and more than of the
# other topic's: questions are short, paragraphs long.
MIN_HITS_QUESTION = 1
MIN_HITS_PARAGRAPH = 2
_WORD = re.compile(r"[a-z]+")


def topic_hits(text: str) -> dict[str, int]:
    """How many distinct words of each topic's lexicon ``text`` contains (plurals count once).

    >>> topic_hits("Enzymes are proteins; an enzyme is no acid and has no pH.")
    {'biology': 2, 'chemistry': 2}
    """
    words = set(_WORD.findall(text.lower()))
    lexicons = {"biology": BIOLOGY_WORDS, "chemistry": CHEMISTRY_WORDS}
    return {t: len({_lemma(w, lex) for w in words} - {None}) for t, lex in lexicons.items()}


def _lemma(word: str, lexicon: frozenset[str]) -> str | None:
    """``word`` or its singular ("cells" -> "cell", "viruses" -> "virus") if in ``lexicon``."""
    for form in (word, word[:-1], word[:-2]) if word.endswith("s") else (word,):
        if form in lexicon:
            return form
    return None


def topic_of(text: str, min_hits: int = MIN_HITS_PARAGRAPH) -> str | None:
    """``"biology"``, ``"chemistry"`` or None (neither, or as many words of each).

    >>> topic_of("Mitochondria are organelles of the cell.", min_hits=1)
    'biology'
    >>> topic_of("The capital of France is Paris.", min_hits=1) is None
    True
    """
    hits = topic_hits(text)
    (first, a), (_, b) = sorted(hits.items(), key=lambda kv: -kv[1])
    return first if a >= min_hits and a > b else None


def split_by_topic(
    items: Sequence[MCQItem], topic: str, min_hits: int = MIN_HITS_QUESTION
) -> tuple[list[MCQItem], list[MCQItem]]:
    """``(of topic, unrelated)``: questions whose text (question and choices) :func:`topic_of`
    puts in ``topic``, and those with none of the topic's words. Questions in between (a word
    or two of the topic, but not enough) are in neither, so the unrelated set stays clean.

    >>> chem, unrelated = split_by_topic(sciq_items(sciq_dir), "chemistry")     # doctest: +SKIP
    """
    check_topic(topic)
    texts = [" ".join([item.question, *item.choices]) for item in items]
    of_topic = [i for i, t in zip(items, texts, strict=True) if topic_of(t, min_hits) == topic]
    unrelated = [i for i, t in zip(items, texts, strict=True) if topic_hits(t)[topic] == 0]
    return of_topic, unrelated


def question_topic(item: MCQItem, min_hits: int = MIN_HITS_QUESTION) -> str | None:
    """:func:`topic_of` a question, its choices included (they often name the topic's terms).

    >>> question_topic(MCQItem("Which is a noble gas?", ["neon", "iron", "salt", "wood"], 0))
    'chemistry'
    """
    return topic_of(" ".join([item.question, *item.choices]), min_hits)


def check_topic(topic: str) -> None:
    if topic not in TOPICS:
        raise UnlearnInterpError(f"topic must be one of {TOPICS}, got {topic!r}")


__all__ = [
    "BIOLOGY_WORDS",
    "CHEMISTRY_WORDS",
    "MIN_HITS_PARAGRAPH",
    "MIN_HITS_QUESTION",
    "TOPICS",
    "check_topic",
    "lexicon",
    "question_topic",
    "split_by_topic",
    "topic_hits",
    "topic_of",
]
