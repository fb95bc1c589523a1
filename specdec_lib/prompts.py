"""Prompt sets: the benchmark's default prompts, a held-out evaluation set, and a generator of training prompts."""

from __future__ import annotations

import ast
import json
import random
import sys
import sysconfig
from pathlib import Path

# The benchmark's built-in set: prose, a list, code, Q&A, instructions.
DEFAULT_PROMPTS = (
    "Once upon a time, there was a little",
    "Here is a list of fruits: apples, bananas,",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Question: What is the boiling point of water?\nAnswer:",
    "1. Preheat the oven to 180 degrees.\n2.",
)

# Held out from draft training: the tutorial's prompts plus 30 more, in styles the training set
# also covers but never with these words. Drafts are scored on these (64 greedy tokens each).
HELDOUT_PROMPTS = DEFAULT_PROMPTS + (
    "Speculative decoding is a technique that",
    "The quick brown fox",
    "The capital of France is",
    "In the beginning of the twentieth century, the city of Vienna",
    "My favourite hobby is knitting because",
    "Scientists have recently discovered that octopuses",
    "The three primary colours are",
    "Dear Sir or Madam,\n\nI am writing to complain about",
    "Recipe for pancakes\n\nIngredients:\n-",
    "Top 5 tips for better sleep:\n1.",
    "Monday: gym\nTuesday: piano lesson\nWednesday:",
    "import torch\nimport torch.nn as nn\n\nclass MLP(nn.Module):\n",
    "def is_prime(n: int) -> bool:\n",
    "for i in range(10):\n",
    "SELECT name, age FROM users WHERE",
    "<html>\n<head>\n<title>",
    "Q: How many legs does a spider have?\nA:",
    "Question: Who wrote Romeo and Juliet?\nAnswer:",
    "Why is the sky blue? The sky appears blue because",
    "Explain gravity in one paragraph.",
    "Translate to French: Good morning, how are you?\n",
    "Write a haiku about autumn leaves.\n",
    "The meeting has been moved to Thursday at 3 pm. Please",
    "Chapter 1\n\nThe rain had not stopped for three days when",
    "The mitochondria is",
    "Here is a summary of the book 'Moby Dick':",
    "Pros of working from home:\n-",
    "2 + 2 = 4\n3 + 5 = 8\n7 + 6 =",
    "The best way to learn a new language is",
    "Breaking news: the local football team",
)

# Input-grounded prompts (chapter 07): tasks whose answer copies from the input (summarise, repeat,
# reformat, edit code, answer from a passage), where prompt lookup finds its drafts in the prompt.
# Never used for draft training.
GROUNDED_PROMPTS = (
    "Passage: The Amazon rainforest covers much of the Amazon basin of South America. The basin spans nine "
    "countries, and the majority of the forest is contained within Brazil.\n"
    "Question: Which country contains the majority of the Amazon rainforest?\n"
    "Answer, quoting the passage:",
    "Repeat the following sentence exactly, then translate it into French.\n"
    "Sentence: The train to Edinburgh leaves from platform four at half past nine.\nRepeated:",
    "Rewrite this list in alphabetical order, one item per line:\nbanana\ncherry\napple\ndate\nelderberry\n"
    "Sorted:\n",
    "Convert these records to JSON.\nname: Alice, age: 31, city: Paris\nname: Bob, age: 27, city: Berlin\nJSON:\n",
    "Fix the bug in this function and write the whole corrected function.\n"
    "def mean(values):\n    total = 0\n    for v in values:\n        total += v\n    return total / len(value)\n"
    "Corrected:\n",
    "Add type hints to this function and return it in full.\n"
    "def greet(name, times):\n    for _ in range(times):\n        print('Hello, ' + name)\nWith type hints:\n",
    "Summarise the meeting notes below in three bullet points.\n"
    "Notes: The team agreed to move the release to Friday. Maria will update the documentation. "
    "Tom will fix the login bug before Thursday. The budget review is postponed to next month.\nSummary:\n-",
    "Text: Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make "
    "glucose and oxygen.\nQuestion: What do plants make during photosynthesis?\nAnswer:",
    "Change every name in this paragraph from Anna to Clara and write the paragraph again.\n"
    "Anna opened the door. Anna looked outside and saw that the garden was covered in snow. "
    "Anna smiled.\nRewritten:",
    "Format the following as a Markdown table with columns City and Population.\n"
    "Tokyo 37 million; Delhi 33 million; Shanghai 29 million; Sao Paulo 22 million\nTable:\n",
    "Here is an email. Copy its first sentence, then write a one-line reply.\n"
    "Email: Thank you for your order of two blue chairs. They will be delivered on Monday between 9 and 12. "
    "Please make sure someone is at home.\nFirst sentence:",
    "Rename the variable x to count in this code and show the result.\n"
    "x = 0\nfor item in items:\n    if item.ok:\n        x += 1\nprint(x)\nResult:\n",
)

TOPICS = (
    "the ocean", "photosynthesis", "a small bakery", "the French Revolution", "black holes", "machine learning",
    "a lost dog", "the stock market", "volcanoes", "friendship", "climate change", "the Roman Empire", "a robot",
    "coffee", "the moon landing", "gardening", "chess", "the human heart", "electric cars", "a haunted house",
    "jazz music", "the internet", "honeybees", "a mountain village", "recycling", "the solar system",
    "ancient Egypt", "a detective", "rainforests", "vaccines", "a spaceship", "football", "the printing press",
    "a dragon", "green tea", "the brain", "earthquakes", "a lighthouse keeper", "Python programming", "databases",
    "sorting algorithms", "a birthday party", "the desert", "penguins", "solar power", "a train journey",
    "medieval castles", "the piano", "exercise", "bread baking", "a time traveller", "the Arctic",
    "democracy", "bicycles", "the weather", "prime numbers", "a pirate ship", "photography", "the library",
    "the immune system", "a startup company", "the Great Wall of China", "dinosaurs", "a job interview",
    "renting an apartment", "the water cycle", "a wedding", "social media", "electricity", "the Olympic Games",
    "a farmer", "cats", "the human skeleton", "video games", "a volcano eruption", "the economy", "a hospital",
    "the Renaissance", "mushrooms", "a snowstorm", "the theory of evolution", "airplanes", "public speaking",
    "a school teacher", "the periodic table", "a marathon", "cloud computing", "the Amazon river", "a museum",
    "budgeting", "DNA", "a thunderstorm", "origami", "the violin", "an old map", "hiking", "the Internet of Things",
)

TEMPLATES = (
    "Write a short story about {t}.",
    "The history of {t} begins",
    "Here are five facts about {t}:\n1.",
    "Q: What is {t}?\nA:",
    "Question: Why is {t} important?\nAnswer:",
    "In this article, we will explore {t}.",
    "Dear friend,\n\nI wanted to tell you about {t}.",
    "Title: {T}\n\nAbstract:",
    "# Notes on {t}\n\n##",
    "Pros and cons of {t}:\n-",
    "Explain {t} to a five-year-old.",
    "The main difference between {t} and {u} is",
    "A poem about {t}:\n\n",
    "Describe {t} in three sentences.",
    "Interview question: tell me about {t}.\n\nAnswer:",
    "Did you know that {t}",
    "{T} can be described as",
    "List three ways {t} and {u} are similar.",
    "Yesterday I read a fascinating book about {t}. It",
    "Summarize what you know about {t}.",
)

CODE_PROMPTS = (
    'def {f}({a}):\n    """{d}"""\n',
    "# {d}\ndef {f}({a}):\n",
    "```python\n# {d}\n",
    "class {C}:\n    \"\"\"{d}\"\"\"\n\n    def __init__(self",
    "// {d}\nfunction {f}({a}) {{\n",
    "-- {d}\nSELECT",
)

FUNCTIONS = (
    ("reverse_string", "s", "Reverse a string."),
    ("count_words", "text", "Count the words in a text."),
    ("mean", "values", "Return the arithmetic mean of a list of numbers."),
    ("is_palindrome", "word", "Check whether a word reads the same backwards."),
    ("factorial", "n", "Compute n factorial recursively."),
    ("merge_sorted", "a, b", "Merge two sorted lists into one sorted list."),
    ("read_csv", "path", "Read a CSV file and return its rows."),
    ("celsius_to_fahrenheit", "c", "Convert a temperature from Celsius to Fahrenheit."),
    ("flatten", "nested", "Flatten a nested list."),
    ("binary_search", "items, target", "Find target in a sorted list."),
    ("gcd", "a, b", "Greatest common divisor of two integers."),
    ("unique", "items", "Return the unique items, keeping their order."),
    ("word_frequencies", "text", "Count how often each word appears."),
    ("matrix_multiply", "a, b", "Multiply two matrices given as lists of lists."),
    ("parse_date", "text", "Parse a date written as YYYY-MM-DD."),
    ("send_email", "to, subject, body", "Send an email message."),
    ("fetch_json", "url", "Download a URL and decode its JSON body."),
    ("bubble_sort", "arr", "Sort a list with bubble sort."),
    ("capitalize_words", "sentence", "Capitalize every word of a sentence."),
    ("sum_digits", "n", "Sum the digits of an integer."),
)

ACTIVITIES = (
    "make a cup of tea", "change a flat tyre", "plant tomatoes", "write a cover letter", "set up a Python project",
    "train for a 5k run", "clean a laptop keyboard", "bake chocolate cookies", "learn to juggle", "paint a room",
)

CHAT_TEMPLATE_SHARE = 0.25


def _template_prompts(rng: random.Random) -> list[str]:
    """Prose, Q&A, list and instruction prompts from templates over many topics."""
    prompts = []
    for t in TOPICS:
        for template in rng.sample(TEMPLATES, 8):
            u = rng.choice(TOPICS)
            prompts.append(template.format(t=t, T=t[0].upper() + t[1:], u=u))
    for a in ACTIVITIES:
        prompts += [f"How to {a}:\n1.", f"Step-by-step guide: how to {a}.\n\nStep 1:"]
    for f, args, doc in FUNCTIONS:
        for template in CODE_PROMPTS:
            name = "".join(w.capitalize() for w in f.split("_"))
            prompts.append(template.format(f=f, a=args, d=doc, C=name))
    return prompts


def _python_sources(limit: int) -> list[Path]:
    """Up to `limit` Python files of the standard library, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "site-packages", "idlelib", "lib2to3"}
    files = sorted(p for p in root.rglob("*.py") if p.stat().st_size > 2000 and not skip & set(p.parts))
    return files[:limit]


def _code_lines(rng: random.Random, text: str) -> str:
    """Two to eight consecutive lines of a source file, from a random place."""
    lines = text.splitlines()
    start = rng.randrange(max(1, len(lines) - 10))
    return "\n".join(lines[start : start + rng.randint(2, 8)]) + "\n"


def _docstring_opening(rng: random.Random, text: str) -> str | None:
    """The first 40-160 characters of one of a source file's longer docstrings (None if it has none)."""
    try:
        docs = [ast.get_docstring(node) for node in ast.walk(ast.parse(text))
                if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module))]
    except SyntaxError:
        return None
    docs = [d for d in docs if d and len(d) > 80]
    return rng.choice(docs)[: rng.randint(40, 160)].rsplit(" ", 1)[0] if docs else None


def _source_snippets(rng: random.Random, n: int) -> list[str]:
    """Code and docstring openings cut from the standard library's sources."""
    snippets = []
    files = _python_sources(10_000)
    for path in rng.sample(files, min(len(files), n)):
        text = path.read_text(errors="ignore")
        snippets.append(_code_lines(rng, text))
        doc = _docstring_opening(rng, text)
        if doc is not None:
            snippets.append(doc)
    return snippets


def training_prompts(n_source_files: int = 10_000, seed: int = 0) -> list[str]:
    """A large varied prompt set for self-distillation; never contains a held-out prompt."""
    rng = random.Random(seed)
    prompts = _template_prompts(rng) + _source_snippets(rng, n_source_files)
    held_out = set(HELDOUT_PROMPTS) | set(GROUNDED_PROMPTS)  # evaluation sets stay unseen
    prompts = [p for p in prompts if p.strip() and p not in held_out]
    rng.shuffle(prompts)
    return prompts


# Chapter 08's EAGLE-3 corpus (training/chunked_corpus.py) draws far more prompts than the list above
# holds. Three sources, each sampled per chunk from the chunk's own seed: the templates above over a
# wider set of topics; code and docstrings from the standard library; and instructions the target
# writes for itself (self-instruct): asked in the chat template for a question or a task about a
# topic, its reply becomes a new prompt. None may be a held-out or grounded prompt, or contain one.
MORE_TOPICS = (
    "tea ceremonies", "quantum computers", "a rainy afternoon", "the Vikings", "coral reefs", "a bus driver",
    "minimalism", "the printing of money", "a jazz club", "glaciers", "spreadsheets", "a village festival",
    "the history of maps", "wolves", "a science fair", "submarines", "street food", "the Silk Road", "yoga",
    "a power outage", "compound interest", "a lost wallet", "the first computers", "owls", "kites",
    "a broken phone", "the night sky", "bridges", "sourdough", "a chess tournament", "public transport",
    "a newspaper", "cryptography", "the Moon's phases", "a family reunion", "houseplants", "traffic jams",
    "the Nile", "an art gallery", "camping", "soap", "a robot vacuum", "wind turbines", "the alphabet",
    "a spelling bee", "card games", "climbing Everest", "chocolate", "an old bicycle", "a music festival",
    "the Industrial Revolution", "pandas", "a first day at school", "invisible ink", "the post office",
    "a fire station", "sleep", "memory", "board games", "a lighthouse", "tides", "a tailor",
    "recycling plastic", "ancient Greece", "the metric system", "sharks", "a cooking competition",
    "learning to swim", "umbrellas", "the telephone", "open source software", "a neighbour's cat",
    "a flooded basement", "the Aztecs", "honey", "a ballet", "rivers", "typewriters", "a quiz night",
    "the Sahara", "a thunderstorm at sea", "time zones", "a garden shed", "satellites", "fairy tales",
    "a ferry crossing", "bees and flowers", "weather forecasts", "a school play", "knights", "the compass",
    "rockets", "a new puppy", "an online course", "version control with git", "regular expressions",
    "unit testing", "web browsers", "linked lists", "hash tables", "recursion", "spreadsheet formulas",
)

TASK_KINDS = (
    "a short poem", "an email", "a list of tips", "a summary", "an explanation for a child", "a short story",
    "a recipe", "a comparison of two things", "a step-by-step guide", "a Python function", "a definition",
    "a persuasive paragraph", "a product description", "a short dialogue", "a quiz question with its answer",
    "a letter", "a plan for a week", "an outline for an essay", "a riddle", "a motivational message",
    "a news headline and its first paragraph", "a SQL query", "a JavaScript function", "a table",
    "a list of pros and cons", "a limerick", "a set of interview questions", "a diary entry", "a speech",
    "a haiku", "a shopping list", "a summary of a famous book", "a short biography", "an advertisement",
)

INSTRUCTION_REQUESTS = (
    "Write a question that someone might ask an AI assistant about {t}. Reply with the question only.",
    "Write an instruction asking an AI assistant for {k} about {t}. Reply with the instruction only.",
    "Give me one interesting question about {t}, and nothing else.",
    "Invent a task about {t} that a student could ask a chatbot to do. Write only the task.",
)


def is_unseen(prompt: str) -> bool:
    """Neither a held-out or grounded prompt nor containing one (their longer ones, as words)."""
    text = prompt.strip().lower()
    if not text:
        return False
    for held in HELDOUT_PROMPTS + GROUNDED_PROMPTS:
        held = held.strip().lower()
        if text == held or (len(held) >= 24 and held in text):
            return False
    return True


def instruction_request(rng: random.Random) -> str:
    """A request for the target to write a new prompt itself (self-instruct), before the chat template."""
    topic = rng.choice(TOPICS + MORE_TOPICS)
    return rng.choice(INSTRUCTION_REQUESTS).format(t=topic, k=rng.choice(TASK_KINDS))


def template_prompt(rng: random.Random) -> str:
    """One of the templates above over the wider topic list."""
    topics = TOPICS + MORE_TOPICS
    t, u = rng.choice(topics), rng.choice(topics)
    if rng.random() < 0.1:
        return f"How to {rng.choice(ACTIVITIES)}:\n1."
    return rng.choice(TEMPLATES).format(t=t, T=t[0].upper() + t[1:], u=u)


def code_prompt(rng: random.Random, files: list[Path]) -> str:
    """A code-template opening, or an opening or docstring cut from one of `files` (the standard library's)."""
    if not files or rng.random() < 0.3:
        f, args, doc = rng.choice(FUNCTIONS)
        return rng.choice(CODE_PROMPTS).format(f=f, a=args, d=doc, C="".join(w.capitalize() for w in f.split("_")))
    return _source_snippets_from(rng, rng.choice(files))


def _source_snippets_from(rng: random.Random, path: Path) -> str:
    """A docstring's opening (about a third of the time, where the file has one) or a few lines of code from `path`."""
    text = path.read_text(errors="ignore")
    doc = _docstring_opening(rng, text) if rng.random() < 0.3 else None
    return doc if doc is not None else _code_lines(rng, text)


def python_sources() -> list[Path]:
    """The standard library's Python files that code prompts are cut from (fixed order)."""
    return _python_sources(10_000)


def as_chat(tokenizer, prompt: str) -> str:
    """The prompt wrapped in the tokenizer's chat template as a user turn, ready for the assistant's reply."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


if __name__ == "__main__":  # pragma: no cover - a quick look at the prompt set
    ps = training_prompts()
    print(len(ps), "training prompts;", len(HELDOUT_PROMPTS), "held out", file=sys.stderr)
    for p in ps[:10]:
        print(repr(p))


def load_prompts(path: str | None) -> list[str]:
    """Prompts from a file (a JSON list of strings, or one prompt per line) or the built-in varied set."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    text = Path(path).read_text()
    if path.endswith(".json"):
        prompts = json.loads(text)
    else:
        prompts = [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f"{path}: expected a non-empty list of prompt strings")
    return prompts
