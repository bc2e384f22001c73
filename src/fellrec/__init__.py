"""fellrec: federated fine-tuning of LLM-based generative recommenders (FELLRec)."""

__version__ = "0.1.0"
