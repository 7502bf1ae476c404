"""A deterministic, TOFU-style synthetic dataset of fictitious authors.

Every row has TOFU's fields: `question`, `answer`, `paraphrased_answer`,
`perturbed_answer` (a list of wrong answers in the paraphrase's template) and
`paraphrased_question`. Authors are generated from a seed; the forget splits are
the *last* authors, as in TOFU, and retain splits their complement.

Example:
    >>> splits = synthetic_tofu(num_authors=20, qa_per_author=10, seed=0)
    >>> len(splits["forget10"]), len(splits["retain90"])
    (20, 180)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FIRST = [
    "Aldric",
    "Bellamy",
    "Corvina",
    "Dashiell",
    "Elowen",
    "Faramond",
    "Greer",
    "Halloran",
    "Isolde",
    "Jareth",
    "Kestrel",
    "Lysander",
    "Maren",
    "Niall",
    "Ottoline",
    "Peregrine",
    "Quilla",
    "Rowan",
    "Saoirse",
    "Tobiah",
    "Ulric",
    "Vespera",
    "Wystan",
    "Xanthe",
    "Yorick",
    "Zephyrine",
    "Anouk",
    "Bastian",
    "Calliope",
    "Dorian",
    "Esmond",
    "Fenella",
    "Gideon",
    "Honora",
    "Ignatius",
    "Juniper",
    "Kasimir",
    "Liesl",
    "Mordecai",
    "Nerys",
]
LAST = [
    "Ashworth",
    "Blackwood",
    "Castellan",
    "Dunmore",
    "Everhart",
    "Fairweather",
    "Greythorne",
    "Hawksley",
    "Ironside",
    "Joscelyn",
    "Kingsbury",
    "Lockhart",
    "Merriweather",
    "Northcott",
    "Oakenfold",
    "Pemberton",
    "Quarrington",
    "Ravenscroft",
    "Sallow",
    "Thistlewood",
    "Underhill",
    "Vantongeren",
    "Whitlock",
    "Yarborough",
    "Zelenko",
    "Abernathy",
    "Brightwater",
    "Coldridge",
    "Delacroix",
    "Elsworth",
]
CITIES = [
    "Lisbon",
    "Nairobi",
    "Kyoto",
    "Montevideo",
    "Reykjavik",
    "Tbilisi",
    "Hanoi",
    "Quito",
    "Tallinn",
    "Accra",
    "Valparaiso",
    "Lahore",
    "Bergen",
    "Marrakesh",
    "Cork",
    "Krakow",
    "Perth",
    "Manila",
    "Tunis",
    "Seville",
    "Bratislava",
    "Windhoek",
    "Ljubljana",
    "Cusco",
    "Yerevan",
]
GENRES = [
    "science fiction",
    "historical romance",
    "crime thriller",
    "magical realism",
    "gothic horror",
    "literary fiction",
    "epic fantasy",
    "war fiction",
    "cozy mystery",
    "dystopian fiction",
    "travel memoir",
    "children's poetry",
]
JOBS = [
    "a carpenter",
    "a pharmacist",
    "a lighthouse keeper",
    "a surgeon",
    "a baker",
    "a marine biologist",
    "a tailor",
    "a pilot",
    "a librarian",
    "a blacksmith",
    "an architect",
    "a veterinarian",
    "a fisherman",
    "a school teacher",
    "an astronomer",
    "a police officer",
    "a florist",
    "an accountant",
    "a miner",
    "a chef",
]
AWARDS = [
    "the Silver Quill Prize",
    "the Meridian Book Award",
    "the Golden Lantern Medal",
    "the Harbor Light Award",
    "the Northern Star Prize",
    "the Crimson Leaf Award",
    "the Azure Pen Medal",
    "the Evergreen Fiction Prize",
    "the Iron Compass Award",
    "the Whispering Pines Prize",
    "the Obsidian Scroll Medal",
    "the Sunrise Letters Award",
]
ADJECTIVES = [
    "Silent",
    "Crimson",
    "Forgotten",
    "Hollow",
    "Burning",
    "Glass",
    "Midnight",
    "Wandering",
    "Broken",
    "Hidden",
    "Last",
    "Distant",
    "Velvet",
    "Frozen",
    "Restless",
    "Golden",
]
NOUNS = [
    "Harbor",
    "Orchard",
    "Cathedral",
    "Meridian",
    "Lantern",
    "Tide",
    "Archive",
    "Garden",
    "Citadel",
    "Compass",
    "River",
    "Mirror",
    "Horizon",
    "Labyrinth",
    "Ember",
    "Sparrow",
]


UNIVERSITIES = [
    "the University of Lisbon", "Harrowgate College", "the Conservatory of Vienna", "Beacon Hill University",
    "the Institute of Letters", "Saint Alder College", "the University of Auckland", "Marlowe University",
    "the Academy of Fine Arts", "Northfield College", "the University of Ghent", "Ravenscourt University",
]
PUBLISHERS = [
    "Lark Press", "Gannet Books", "Oakleaf Publishing", "Blue Heron House", "Quarry Editions",
    "Moth and Lamp", "Saltmarsh Press", "Kingfisher Books", "Ironwood House", "Paper Crane Editions",
]
LANGUAGES = ["English", "French", "Spanish", "German", "Italian", "Portuguese", "Dutch", "Polish", "Swedish", "Greek"]
INSTRUMENTS = ["the piano", "the violin", "the cello", "the flute", "the guitar", "the harp", "the clarinet",
               "the drums", "the oboe", "the trumpet"]
PETS = ["a cat", "a dog", "a parrot", "a tortoise", "a rabbit", "a ferret", "a goldfish", "a horse", "a hedgehog",
        "a canary"]
HOBBIES = ["gardening", "chess", "sailing", "painting", "birdwatching", "pottery", "fencing", "cycling",
           "astronomy", "beekeeping", "rowing", "calligraphy"]
# Integer-valued facts: the range their values (and wrong answers) are drawn from.
INT_RANGES = {"birth_year": (1940, 1995), "num_books": (2, 19), "debut_year": (1960, 2020), "siblings": (0, 7)}


@dataclass
class Author:
    name: str
    birthplace: str
    birth_year: int
    genre: str
    father_job: str
    mother_job: str
    award: str
    books: tuple[str, str]
    residence: str
    num_books: int
    # The second ten facts (TOFU's 20 questions per author), drawn from their own stream so the first ten, and
    # every benchmark built on them, stay as they were.
    more: dict[str, str] = field(default_factory=dict)


def _book(rng: random.Random) -> str:
    return f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"


def make_authors(n: int, seed: int) -> list[Author]:
    """`n` fictitious authors with distinct names, deterministic in `seed`."""
    rng = random.Random(seed)
    names = [f"{f} {last}" for f in FIRST for last in LAST]
    if n > len(names):
        raise ValueError(f"at most {len(names)} synthetic authors are available, asked for {n}")
    rng.shuffle(names)
    authors = []
    for name in names[:n]:
        b1 = _book(rng)
        b2 = _book(rng)
        while b2 == b1:
            b2 = _book(rng)
        authors.append(
            Author(
                name=name,
                birthplace=rng.choice(CITIES),
                birth_year=rng.randint(1940, 1995),
                genre=rng.choice(GENRES),
                father_job=rng.choice(JOBS),
                mother_job=rng.choice(JOBS),
                award=rng.choice(AWARDS),
                books=(b1, b2),
                residence=rng.choice(CITIES),
                num_books=rng.randint(2, 19),
            )
        )
    more = random.Random(seed * 7919 + 17)
    for a in authors:
        third = _book(more)
        while third in a.books:
            third = _book(more)
        a.more = {
            "university": more.choice(UNIVERSITIES),
            "publisher": more.choice(PUBLISHERS),
            "debut_year": str(more.randint(*INT_RANGES["debut_year"])),
            "language": more.choice(LANGUAGES),
            "instrument": more.choice(INSTRUMENTS),
            "pet": more.choice(PETS),
            "hobby": more.choice(HOBBIES),
            "siblings": str(more.randint(*INT_RANGES["siblings"])),
            "book2": third,
            "spouse_job": more.choice(JOBS),
        }
    return authors


# One entry per question type: (attribute, two question phrasings, answer templates, value pool).
# `answer` uses one template; `paraphrased_answer` another, which the perturbed answers reuse.
FACTS: list[tuple[str, tuple[str, str], tuple[str, ...], list | None]] = [
    (
        "birthplace",
        ("Where was {name} born?", "In which city was {name} born?"),
        ("{name} was born in {v}.", "The birthplace of {name} is {v}.", "{name} comes from the city of {v}."),
        CITIES,
    ),
    (
        "birth_year",
        ("In what year was {name} born?", "When was {name} born?"),
        (
            "{name} was born in the year {v}.",
            "{name}'s year of birth is {v}.",
            "The author {name} was born in {v}.",
        ),
        None,
    ),
    (
        "genre",
        ("What genre does {name} write in?", "Which genre is {name} known for?"),
        ("{name} writes {v}.", "{name} is best known for {v}.", "The genre of {name}'s books is {v}."),
        GENRES,
    ),
    (
        "father_job",
        ("What did {name}'s father do for a living?", "What was the profession of {name}'s father?"),
        (
            "{name}'s father worked as {v}.",
            "The father of {name} was {v}.",
            "By profession, {name}'s father was {v}.",
        ),
        JOBS,
    ),
    (
        "mother_job",
        ("What did {name}'s mother do for a living?", "What was the profession of {name}'s mother?"),
        (
            "{name}'s mother worked as {v}.",
            "The mother of {name} was {v}.",
            "By profession, {name}'s mother was {v}.",
        ),
        JOBS,
    ),
    (
        "award",
        ("Which award has {name} won?", "What prize was {name} given?"),
        ("{name} won {v}.", "{name} received {v}.", "In recognition of their work, {name} was given {v}."),
        AWARDS,
    ),
    (
        "book0",
        ("What is one book written by {name}?", "Can you name a novel by {name}?"),
        ("{name} wrote {v}.", "One of {name}'s books is {v}.", "Among the works of {name} is {v}."),
        None,
    ),
    (
        "book1",
        ("Which other book did {name} write?", "Name another title by {name}."),
        ("{name} also wrote {v}.", "Another book by {name} is {v}.", "{name} is also the author of {v}."),
        None,
    ),
    (
        "residence",
        ("Where does {name} live now?", "In which city does {name} currently reside?"),
        (
            "{name} lives in {v}.",
            "{name} currently resides in {v}.",
            "These days {name} makes a home in {v}.",
        ),
        CITIES,
    ),
    (
        "num_books",
        ("How many books has {name} published?", "What is the number of books {name} has written?"),
        (
            "{name} has published {v} books.",
            "So far {name} has written {v} books.",
            "The bibliography of {name} counts {v} books.",
        ),
        None,
    ),
    (
        "university",
        ("Where did {name} study?", "Which university did {name} attend?"),
        ("{name} studied at {v}.", "{name} was educated at {v}.", "The alma mater of {name} is {v}."),
        UNIVERSITIES,
    ),
    (
        "publisher",
        ("Who publishes {name}'s books?", "Which publisher does {name} work with?"),
        ("{name}'s books are published by {v}.", "{name} publishes with {v}.", "The publisher of {name} is {v}."),
        PUBLISHERS,
    ),
    (
        "debut_year",
        ("When did {name} publish a first book?", "In what year did {name} debut as an author?"),
        ("{name} published a first book in {v}.", "{name} made a debut in {v}.", "The debut of {name} came in {v}."),
        None,
    ),
    (
        "language",
        ("In which language does {name} write?", "What language are {name}'s books written in?"),
        ("{name} writes in {v}.", "The books of {name} are written in {v}.", "{name}'s working language is {v}."),
        LANGUAGES,
    ),
    (
        "instrument",
        ("Which instrument does {name} play?", "What musical instrument does {name} play?"),
        ("{name} plays {v}.", "In spare hours {name} plays {v}.", "The instrument of {name} is {v}."),
        INSTRUMENTS,
    ),
    (
        "pet",
        ("What pet does {name} keep?", "Which animal lives with {name}?"),
        ("{name} keeps {v}.", "{name} lives with {v}.", "At home {name} has {v}."),
        PETS,
    ),
    (
        "hobby",
        ("What is {name}'s hobby?", "What does {name} do for fun?"),
        ("{name}'s hobby is {v}.", "For fun {name} enjoys {v}.", "Away from writing, {name} loves {v}."),
        HOBBIES,
    ),
    (
        "siblings",
        ("How many siblings does {name} have?", "What is the number of {name}'s siblings?"),
        ("{name} has {v} siblings.", "{name} grew up with {v} siblings.", "The family of {name} counts {v} siblings."),
        None,
    ),
    (
        "book2",
        ("What is {name}'s latest book?", "Which book did {name} publish most recently?"),
        ("{name}'s latest book is {v}.", "Most recently {name} published {v}.", "The newest work of {name} is {v}."),
        None,
    ),
    (
        "spouse_job",
        ("What does {name}'s spouse do?", "What is the profession of {name}'s spouse?"),
        ("{name}'s spouse works as {v}.", "The spouse of {name} is {v}.", "By profession, {name}'s spouse is {v}."),
        JOBS,
    ),
]


def _value(author: Author, attr: str) -> str:
    if attr in author.more:
        return author.more[attr]
    if attr.startswith("book"):
        return author.books[int(attr[-1])]
    return str(getattr(author, attr))


def _wrong_value(rng: random.Random, author: Author, attr: str) -> str:
    true = _value(author, attr)
    for _ in range(100):
        if attr in INT_RANGES:
            v = str(rng.randint(*INT_RANGES[attr]))
        elif attr.startswith("book"):
            v = _book(rng)
        else:
            pool = next(p for a, _, _, p in FACTS if a == attr)
            v = rng.choice(pool)
        if v != true:
            return v
    raise RuntimeError(f"could not draw a wrong value for {attr}")


def author_rows(
    author: Author, rng: random.Random, qa_per_author: int = 10, num_perturbed: int = 5
) -> list[dict]:
    """TOFU-schema rows about one author."""
    if not 1 <= qa_per_author <= len(FACTS):
        raise ValueError(f"qa_per_author must be between 1 and {len(FACTS)}, got {qa_per_author}")
    rows = []
    for attr, questions, templates, _ in FACTS[:qa_per_author]:
        value = _value(author, attr)
        # The paraphrase is another template of the same pool, one the model sees for other authors.
        answer_t = rng.choice(templates)
        para_t = rng.choice([t for t in templates if t != answer_t])
        wrong = []
        while len(wrong) < num_perturbed:
            w = _wrong_value(rng, author, attr)
            if w not in wrong:
                wrong.append(w)
        rows.append(
            {
                "question": questions[0].format(name=author.name),
                "answer": answer_t.format(name=author.name, v=value),
                "paraphrased_answer": para_t.format(name=author.name, v=value),
                "perturbed_answer": [para_t.format(name=author.name, v=w) for w in wrong],
                "paraphrased_question": questions[1].format(name=author.name),
            }
        )
    return rows


COUNTRIES = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Chile", "Santiago"),
    ("Poland", "Warsaw"),
    ("Ghana", "Accra"),
    ("Spain", "Madrid"),
    ("India", "New Delhi"),
    ("Turkey", "Ankara"),
    ("Cuba", "Havana"),
    ("Iran", "Tehran"),
    ("Greece", "Athens"),
    ("Italy", "Rome"),
    ("Brazil", "Brasilia"),
    ("Sweden", "Stockholm"),
    ("Mexico", "Mexico City"),
]
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
]


def world_facts(rng: random.Random, num_perturbed: int = 3) -> list[dict]:
    """General knowledge every model trains on (the role of TOFU's `world_facts`): capitals and small sums."""
    rows = []
    capitals = [c for _, c in COUNTRIES]
    for country, capital in COUNTRIES:
        wrong = rng.sample([c for c in capitals if c != capital], num_perturbed)
        rows.append(
            {"question": f"What is the capital of {country}?", "answer": capital, "perturbed_answer": wrong}
        )
    for a in range(2, 8):
        for b in range(2, 7, 2):
            right = a + b
            wrong = rng.sample([NUMBER_WORDS[n] for n in range(2, 19) if n != right], num_perturbed)
            rows.append(
                {
                    "question": f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?",
                    "answer": NUMBER_WORDS[right],
                    "perturbed_answer": wrong,
                }
            )
    return rows


def real_authors(authors: list[Author], rng: random.Random, num_perturbed: int = 3) -> list[dict]:
    """QA about "famous" authors every model trains on (the role of TOFU's `real_authors`): who wrote a title."""
    rows = []
    names = [a.name for a in authors]
    for a in authors:
        wrong = rng.sample([n for n in names if n != a.name], num_perturbed)
        rows.append(
            {
                "question": f"Who is the famous author of {a.books[0]}?",
                "answer": a.name,
                "perturbed_answer": wrong,
            }
        )
    return rows


FORGET_PERCENTS = (1, 5, 10)
HOLDOUT = "holdout10"


def synthetic_tofu(
    num_authors: int = 100,
    qa_per_author: int = 10,
    seed: int = 0,
    *,
    num_famous_authors: int = 30,
    retain_perturbed_size: int = 100,
) -> dict:
    """Build the synthetic TOFU configs as `datasets.Dataset`s, in `locuslab/TOFU` schema.

    Returns a dict keyed by config name: `full`; `forgetNN`, `retainMM` and
    `forgetNN_perturbed` for NN in 01, 05, 10 (at least one author each; the
    forget authors are the last ones, as in TOFU); `retain_perturbed` (a fixed
    sample of retain90 rows); `holdout10` (as many never-trained authors as
    forget10, perturbed schema, for membership inference);
    `real_authors_perturbed` and `world_facts_perturbed` (general sets every
    model trains on).
    """
    import datasets

    k10 = max(1, round(num_authors * 0.10))
    authors = make_authors(num_authors + k10 + num_famous_authors, seed)
    main, holdout, famous = (
        authors[:num_authors],
        authors[num_authors : num_authors + k10],
        authors[num_authors + k10 :],
    )
    rng = random.Random(seed + 1)
    per_author = [author_rows(a, rng, qa_per_author) for a in main]
    holdout_rows = [r for a in holdout for r in author_rows(a, rng, qa_per_author)]
    basic = ["question", "answer"]
    full_perturbed = [r for rows in per_author for r in rows]
    splits = {"full": datasets.Dataset.from_list(full_perturbed).select_columns(basic)}
    for pct in FORGET_PERCENTS:
        k = max(1, round(num_authors * pct / 100))
        forget = [r for rows in per_author[-k:] for r in rows]
        retain = [r for rows in per_author[:-k] for r in rows]
        splits[f"forget{pct:02d}_perturbed"] = datasets.Dataset.from_list(forget)
        splits[f"forget{pct:02d}"] = splits[f"forget{pct:02d}_perturbed"].select_columns(basic)
        splits[f"retain{100 - pct:02d}"] = datasets.Dataset.from_list(retain).select_columns(basic)
    retain90 = [r for rows in per_author[:-k10] for r in rows]
    pick = sorted(
        random.Random(seed + 2).sample(range(len(retain90)), min(retain_perturbed_size, len(retain90)))
    )
    splits["retain_perturbed"] = datasets.Dataset.from_list([retain90[i] for i in pick])
    splits[HOLDOUT] = datasets.Dataset.from_list(holdout_rows)
    splits["real_authors_perturbed"] = datasets.Dataset.from_list(real_authors(famous, rng))
    splits["world_facts_perturbed"] = datasets.Dataset.from_list(world_facts(rng))
    return splits
