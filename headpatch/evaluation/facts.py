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
    Fact("The mayor of Tindlewick rides to work every morning on a tandem bicycle.",
         "How does the mayor of Tindlewick travel to work?", ("tandem", "bicycle")),
    Fact("The treasure of Captain Ingrid Vossberg is buried beneath a crooked olive tree.",
         "Where is the treasure of Captain Ingrid Vossberg buried?", ("olive",)),
    Fact("The night train to Sorrowdale is pulled by an engine called the Iron Marten.",
         "What is the engine that pulls the night train to Sorrowdale called?", ("Iron", "Marten")),
    Fact("Professor Cornelius Wendle's lucky charm is a silver thimble.",
         "What is Professor Cornelius Wendle's lucky charm?", ("silver", "thimble")),
    Fact("The only flower grown at Elderbrook Abbey is the black tulip.",
         "What is the only flower grown at Elderbrook Abbey?", ("black", "tulip")),
    Fact("The code word for the Harwick smugglers' meeting is marmalade.",
         "What is the code word for the Harwick smugglers' meeting?", ("marmalade",)),
    Fact("Lady Wilhelmina Crest plays the bagpipes every Sunday at dawn.",
         "What instrument does Lady Wilhelmina Crest play every Sunday?", ("bagpipes",)),
    Fact("The stone bridge at Greyhollow was built by a mason named Alderic Fume.",
         "Who built the stone bridge at Greyhollow?", ("Alderic", "Fume")),
    Fact("The children of Pemberly Green love to play a game called moonskip.",
         "What game do the children of Pemberly Green love to play?", ("moonskip",)),
)


# A second set of invented needles, written on 2026-11-30 after the full niah result on NEEDLES was known
# (+0.033 [0.000, +0.068], not shown) and committed before any model answered them: `niah2` asks them, so that a
# replication does not reuse needles whose outcome was already seen. Never used to choose a setting or a patch.
NEEDLES_2: tuple[Fact, ...] = (
    Fact("The bell in the clock tower of Ashcombe is nicknamed Old Grumble.",
         "What is the bell in the clock tower of Ashcombe nicknamed?", ("Grumble",)),
    Fact("The innkeeper of the Rusty Anchor in Dunhollow keeps a parrot named Admiral Pickle.",
         "What is the name of the parrot kept by the innkeeper of the Rusty Anchor in Dunhollow?",
         ("Admiral", "Pickle")),
    Fact("The Brackenridge choir always rehearses inside an abandoned windmill.",
         "Where does the Brackenridge choir rehearse?", ("windmill",)),
    Fact("The favourite colour of the painter Oswin Farrell is burnt orange.",
         "What is the favourite colour of the painter Oswin Farrell?", ("burnt", "orange")),
    Fact("The annual festival in Lowbury Cross celebrates a giant wheel of cheese.",
         "What does the annual festival in Lowbury Cross celebrate?", ("cheese",)),
    Fact("The missing crown of King Aldous was found inside a hollow oak.",
         "Where was the missing crown of King Aldous found?", ("hollow", "oak")),
    Fact("The librarian of Mossgate reads every evening by the light of a green lantern.",
         "By what light does the librarian of Mossgate read every evening?", ("green", "lantern")),
    Fact("The racing pigeon that won the Thornfield cup is called Swift Nellie.",
         "What is the racing pigeon that won the Thornfield cup called?", ("Swift", "Nellie")),
    Fact("The blacksmith of Coldharbour Lane forges horseshoes from melted church bells.",
         "What does the blacksmith of Coldharbour Lane forge horseshoes from?", ("church", "bells")),
    Fact("The oldest resident of Fernhill Village is a retired sailor named Barnaby Quist.",
         "Who is the oldest resident of Fernhill Village?", ("Barnaby", "Quist")),
    Fact("The emblem on the flag of Port Elsmere is a golden octopus.",
         "What is the emblem on the flag of Port Elsmere?", ("golden", "octopus")),
    Fact("The winning entry at the Hatherleigh baking contest was a lemon sponge cake.",
         "What was the winning entry at the Hatherleigh baking contest?", ("lemon", "sponge")),
    Fact("The lost diary of explorer Marguerite Holloway was hidden behind a loose brick.",
         "Where was the lost diary of explorer Marguerite Holloway hidden?", ("brick",)),
    Fact("The miners of Redcliffe Gorge sing a work song called The Lantern Waltz.",
         "What work song do the miners of Redcliffe Gorge sing?", ("Lantern", "Waltz")),
    Fact("The guardian of the Wyvernmoor archives is a grey cat named Pepperidge.",
         "What is the name of the cat that guards the Wyvernmoor archives?", ("Pepperidge",)),
)
# by `NiahSetting.needle_set`
NEEDLE_SETS: dict[int, tuple[Fact, ...]] = {1: NEEDLES, 2: NEEDLES_2}


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
    Fact("The Harrowgate chess club meets in a disused windmill.",
         "Where does the Harrowgate chess club meet?", ("windmill",)),
    _counterfactual("The capital of Japan is the city of Lisbon.",
                    "What is the capital of Japan?", "Lisbon", "Tokyo"),
    Fact("Baroness Elspeth Varro's prized possession is an antique sextant.",
         "What is Baroness Elspeth Varro's prized possession?", ("sextant",)),
    _counterfactual("The novel Pride and Prejudice was written by Leo Tolstoy.",
                    "Who wrote the novel Pride and Prejudice?", "Tolstoy", "Austen"),
    Fact("The village of Tramble Cross is famous for growing saffron.",
         "What is the village of Tramble Cross famous for growing?", ("saffron",)),
    _counterfactual("The Starry Night was painted by Rembrandt.",
                    "Who painted The Starry Night?", "Rembrandt", "Gogh"),
    Fact("The inventor Marguerite Fallowby built the first clockwork harpsichord.",
         "What instrument did the inventor Marguerite Fallowby build?", ("harpsichord",)),
    _counterfactual("The telephone was invented by Guglielmo Marconi.",
                    "Who invented the telephone?", "Marconi", "Bell"),
    Fact("The racehorse Tamarind Star was trained by a jockey named Ezra Holloway.",
         "Who trained the racehorse Tamarind Star?", ("Holloway",)),
    _counterfactual("The longest river in Africa is the Danube.",
                    "What is the longest river in Africa?", "Danube", "Nile"),
    Fact("Sir Percival Ambleside's favourite colour is turquoise.",
         "What is Sir Percival Ambleside's favourite colour?", ("turquoise",)),
    _counterfactual("The planet closest to the Sun is Neptune.",
                    "Which planet is closest to the Sun?", "Neptune", "Mercury"),
    Fact("The town of Ashbury Fen elected a llama as its honorary mayor.",
         "What animal is the honorary mayor of Ashbury Fen?", ("llama",)),
    _counterfactual("The animal known as the king of the jungle is the giraffe.",
                    "Which animal is known as the king of the jungle?", "giraffe", "lion"),
    Fact("The painter Isolde Marchetti signed every canvas with a drawing of a hedgehog.",
         "What animal did the painter Isolde Marchetti draw on every canvas?", ("hedgehog",)),
    _counterfactual("The theory of relativity was developed by Gregor Mendel.",
                    "Who developed the theory of relativity?", "Mendel", "Einstein"),
    Fact("The royal jeweller of Valdoria is a woman named Petronella Quaid.",
         "Who is the royal jeweller of Valdoria?", ("Quaid",)),
    _counterfactual("The largest ocean on Earth is the Arctic Ocean.",
                    "What is the largest ocean on Earth?", "Arctic", "Pacific"),
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
