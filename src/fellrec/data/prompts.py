"""The prompts (METHOD.md §2): BIGRec's Alpaca template, or a compact one; one template for training and inference.

A prompt is built from parts, (prefix, one piece per history title, suffix), so the scoring objective can read the
model at the end of every title; joined, the parts are the prompt text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fellrec.data.table import Sample

_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n"
    "### Input:\n{input}\n\n"
    "### Response:\n"
)


@dataclass(frozen=True)
class PromptStyle:
    """The words that name items and the interaction: ("movies", "watched") or ("video games", "played")."""

    noun: str = "movies"
    verb: str = "watched"
    template: str = "bigrec"
    """`bigrec` (the Alpaca template, about 60 tokens of instructions) or `compact` ("Movies watched: T1; T2; ...")."""
    years: bool = True
    """Keep a history title's trailing release year, "Toy Story (1995)"; False shows "Toy Story"."""

    @classmethod
    def from_args(cls, data_args) -> "PromptStyle":
        return cls(data_args.item_noun, data_args.item_verb, data_args.prompt, data_args.title_years)

    @property
    def singular(self) -> str:
        return self.noun[:-1] if self.noun.endswith("s") else self.noun

    def shown(self, title: str) -> str:
        """A history title as the prompt shows it (the response, which is grounded to real titles, keeps its year)."""
        return title if self.years else _YEAR.sub("", title)

    def prompt(self, history_titles: list[str]) -> str:
        """Everything the model reads before it writes (BIGRec: up to and including "### Response:\\n")."""
        prefix, pieces, suffix = self.parts(history_titles)
        return prefix + "".join(pieces) + suffix

    def parts(self, history_titles: list[str]) -> tuple[str, list[str], str]:
        """(prefix, one piece per title, suffix): each piece ends with its title (and the compact separator)."""
        history_titles = [self.shown(t) for t in history_titles]
        if self.template == "compact":
            return (f"{self.noun.capitalize()} {self.verb}:", [f" {t};" for t in history_titles],
                    f" Next {self.singular}:")
        instruction = (f"Given a list of {self.noun} the user has {self.verb} before, "
                       f"please recommend a new {self.singular} that the user likes to the user.")
        head, _, tail = _TEMPLATE.format(instruction=instruction, input="\0").partition("\0")
        pieces = [(", " if i else " ") + quote(t) for i, t in enumerate(history_titles)]
        return head + f"The user has {self.verb} the following {self.noun} before:", pieces, tail


_YEAR = re.compile(r"\s*\(\d{4}\)$")  # MovieLens: "Toy Story (1995)"; the SmolLM2 tokenizer spends 6 tokens on it


def quote(title: str) -> str:
    return f'"{title}"'


def response(target_titles: list[str]) -> str:
    """The text the model learns to write: the quoted target title(s)."""
    return ", ".join(quote(t) for t in target_titles)


def render(sample: Sample, titles: dict[str, str], style: PromptStyle) -> tuple[str, str]:
    """(prompt, response) of a sample, with item ids turned into titles."""
    return style.prompt([titles[i] for i in sample.history]), response([titles[i] for i in sample.targets])
