"""Non-LLM baselines ranked by the same code, on the same users and windows, as the LLM recommenders."""

from fellrec.baselines.sasrec import SASRec, SASRecArgs, collaborative_rank_scores, train_sasrec

__all__ = ["SASRec", "SASRecArgs", "collaborative_rank_scores", "train_sasrec"]
