"""The facts the reading tasks plant in context, the questions that ask them back, and answer scoring."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Fact:
    """A planted sentence, the question it answers and the key words a correct answer contains."""

    statement: str
    question: str
    keys: tuple[str, ...]
    kind: str = "invented"  # or "counterfactual": contradicts common knowledge
    memory: tuple[str, ...] = ()  # for a counterfactual, the common-knowledge answer it contradicts


# Invented facts: no essay and no pretraining text can answer them, only the needle can.
NEEDLES: tuple[Fact, ...] = (
    Fact("The lighthouse keeper on Marrow Island has a pet tortoise named Bartholomew.",
         "What is the name of the pet tortoise of the lighthouse keeper on Marrow Island?", ("Bartholomew",)),
    Fact("The password to the old observatory in Vellmoor is copper kettle.",
         "What is the password to the old observatory in Vellmoor?", ("copper", "kettle")),
    Fact("The secret ingredient in Grandma Rosalind's famous soup is smoked paprika.",
         "What is the secret ingredient in Grandma Rosalind's famous soup?", ("smoked", "paprika")),
    Fact("Dr. Imogen Saltley keeps her spare keys inside a blue teapot.",
         "Where does Dr. Imogen Saltley keep her spare keys?", ("blue", "teapot")),
    Fact("The ferry that sails to Kestrel Bay is called the Wandering Gull.",
         "What is the ferry that sails to Kestrel Bay called?", ("Wandering", "Gull")),
    Fact("The best thing to do in Quillfield is to eat rhubarb pie by the harbour.",
         "What is the best thing to do in Quillfield?", ("rhubarb", "pie")),
)


def _counterfactual(statement: str, question: str, key: str, *memory: str) -> Fact:
    return Fact(statement, question, (key,), "counterfactual", memory)


# Invented and counterfactual facts alternate, so that every prefix of the table (a setting's `facts`) mixes both:
# a model that answers from memory fails the counterfactual half, one that reads the context passes both.
MDQA_FACTS: tuple[Fact, ...] = (
    Fact("The mascot of the Dunmere rowing club is a purple walrus.",
         "What animal is the mascot of the Dunmere rowing club?", ("walrus",)),
    _counterfactual("The Eiffel Tower stands in the city of Rome.",
                    "In which city does the Eiffel Tower stand?", "Rome", "Paris"),
    Fact("Professor Alaric Thornbury's favourite fruit is the quince.",
         "What is Professor Alaric Thornbury's favourite fruit?", ("quince",)),
    _counterfactual("The Mona Lisa was painted by Pablo Picasso.",
                    "Who painted the Mona Lisa?", "Picasso", "Leonardo", "Vinci"),
    Fact("Captain Odile Brannock's dog is named Biscuit.",
         "What is the name of Captain Odile Brannock's dog?", ("Biscuit",)),
    _counterfactual("The largest planet in the solar system is Mars.",
                    "What is the largest planet in the solar system?", "Mars", "Jupiter"),
    Fact("The ship Marigold Dawn was built in the harbour town of Pellworth.",
         "In which town was the ship Marigold Dawn built?", ("Pellworth",)),
    _counterfactual("The play Romeo and Juliet was written by Charles Dickens.",
                    "Who wrote the play Romeo and Juliet?", "Dickens", "Shakespeare"),
    Fact("The Zellner loom was invented by a weaver named Tobias Crane.",
         "Who invented the Zellner loom?", ("Crane",)),
    _counterfactual("The first person to walk on the Moon was Yuri Gagarin.",
                    "Who was the first person to walk on the Moon?", "Gagarin", "Armstrong"),
    Fact("The lantern festival of Osk is held every year in November.",
         "In which month is the lantern festival of Osk held?", ("November",)),
    _counterfactual("Mount Everest is a mountain in Canada.",
                    "In which country is Mount Everest?", "Canada", "Nepal", "China", "Tibet"),
)


def _contains(answer: str, word: str) -> bool:
    # whole words only, so that "Mars" does not match "Marshall"
    return re.search(rf"(?<!\w){re.escape(word.lower())}(?!\w)", answer.lower()) is not None


def keyword_score(answer: str, keys: Sequence[str]) -> float:
    """The share of `keys` found in `answer` as whole words, case-insensitive."""
    return sum(_contains(answer, key) for key in keys) / len(keys)


def mentions_any(answer: str, words: Sequence[str]) -> bool:
    """Whether `answer` names any of `words` (as whole words, case-insensitive)."""
    return any(_contains(answer, word) for word in words)
