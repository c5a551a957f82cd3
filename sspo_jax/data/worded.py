"""Worded rendering of the built-in arithmetic task (``data.arithmetic.style: worded``).

The same chains of integer operations as the symbolic task (`sspo_jax.data.arithmetic`), told as
a short story whose worked solution is natural language: one sentence per step, each a clause
for the action and a clause for the running count, e.g.

  prompt:   ``Mia has 12 apples. She buys 5 more apples. Then she gives 4 apples to Leo.
            How many apples does Mia have now?``
  solution: ``Mia starts with 12 apples. She buys 5 more, so she has 12+5=17 apples. She gives
            away 4, so she has 17-4=13 apples. The answer is \\boxed{13}.``

This is the task where subsentences are clauses of words: the decisive result digits sit among
tokens copied from the prompt, which is the situation SSPO's segment ratio and its token guard are
about. The names, items and phrasings are drawn from the problem's own generator after the
chain, so a problem still depends only on (seed, index).
"""

from __future__ import annotations

import numpy as np

NAMES = (("Mia", "she"), ("Leo", "he"), ("Ava", "she"), ("Sam", "he"), ("Zoe", "she"), ("Max", "he"),
         ("Ivy", "she"), ("Ben", "he"), ("Eva", "she"), ("Tom", "he"))
ITEMS = ("apples", "pens", "books", "stickers", "marbles", "cookies", "stamps", "coins", "shells", "cards")

# Per operator: (prompt sentence, solution clause of the action); {p} is the pronoun, {P} it
# capitalised, {n} the operand, {i} the item, {f} a friend's name.
_PHRASES = {
    "+": (("{P} buys {n} more {i}.", "{P} buys {n} more"),
          ("Then {p} finds {n} more {i}.", "{P} finds {n} more"),
          ("{f} gives {p_obj} {n} {i}.", "{f} gives {p_obj} {n}")),
    "-": (("Then {p} gives {n} {i} to {f}.", "{P} gives away {n}"),
          ("{P} loses {n} {i}.", "{P} loses {n}"),
          ("{P} sells {n} {i}.", "{P} sells {n}")),
    "*": (("Then {p} gets {n} times as many {i}.", "{P} gets {n} times as many"),
          ("The number of {i} grows {n} times.", "The number grows {n} times")),
    "/": (("{P} splits the {i} into {n} equal groups and keeps one group.", "{P} keeps one of {n} equal groups"),),
}
_OBJECT = {"she": "her", "he": "him"}


def render(start: int, steps: list[tuple[str, int, int]], rng: np.random.Generator) -> dict[str, str]:
    """``{"prompt", "answer", "solution"}`` of the chain ``start (op operand = result)...``."""
    (name, pronoun), item = NAMES[int(rng.integers(len(NAMES)))], ITEMS[int(rng.integers(len(ITEMS)))]
    friends = [n for n, _ in NAMES if n != name]
    fields = {"p": pronoun, "P": pronoun.capitalize(), "p_obj": _OBJECT[pronoun], "i": item}
    prompt, solution = [f"{name} has {start} {item}."], [f"{name} starts with {start} {item}."]
    value = start
    for op, operand, result in steps:
        ask, tell = _PHRASES[op][int(rng.integers(len(_PHRASES[op])))]
        friend = friends[int(rng.integers(len(friends)))]
        fill = {**fields, "n": operand, "f": friend}
        prompt.append(ask.format(**fill))
        solution.append(f"{tell.format(**fill)}, so {pronoun} has {value}{op}{operand}={result} {item}.")
        value = result
    prompt.append(f"How many {item} does {name} have now?")
    solution.append(f"The answer is \\boxed{{{value}}}.")
    return {"prompt": " ".join(prompt), "answer": str(value), "solution": " ".join(solution)}
