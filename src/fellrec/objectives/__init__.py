"""The two recommenders on the split LLM, as plug-ins behind one interface (`Objective`): how samples are encoded,
the loss on a batch, and the ranking of users over all items. The federation never asks which one runs."""

from fellrec.objectives.base import Objective, build_objective
from fellrec.objectives.generate import GenerateObjective
from fellrec.objectives.score import ScoreObjective

__all__ = ["GenerateObjective", "Objective", "ScoreObjective", "build_objective"]
