"""The BIGRec prompt (Alpaca template, METHOD.md §2): one template for training and inference."""

from __future__ import annotations

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

    @property
    def singular(self) -> str:
        return self.noun[:-1] if self.noun.endswith("s") else self.noun

    def prompt(self, history_titles: list[str]) -> str:
        """Everything up to and including "### Response:\\n"; the model writes what follows."""
        instruction = (f"Given a list of {self.noun} the user has {self.verb} before, "
                       f"please recommend a new {self.singular} that the user likes to the user.")
        listed = ", ".join(quote(t) for t in history_titles)
        return _TEMPLATE.format(instruction=instruction,
                                input=f"The user has {self.verb} the following {self.noun} before: {listed}")


def quote(title: str) -> str:
    return f'"{title}"'


def response(target_titles: list[str]) -> str:
    """The text the model learns to write: the quoted target title(s)."""
    return ", ".join(quote(t) for t in target_titles)


def render(sample: Sample, titles: dict[str, str], style: PromptStyle) -> tuple[str, str]:
    """(prompt, response) of a sample, with item ids turned into titles."""
    return style.prompt([titles[i] for i in sample.history]), response([titles[i] for i in sample.targets])
