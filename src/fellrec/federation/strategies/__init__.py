"""Federated strategies: how the server turns the clients' adapters into each client's next adapter.

One small module per algorithm, each overriding a hook or two of :class:`Strategy` (the Flower convention).
"""

from fellrec.federation.strategies.base import State, Strategy
from fellrec.federation.strategies.centralized import Centralized
from fellrec.federation.strategies.factory import STRATEGIES, build_strategy, strategy_options
from fellrec.federation.strategies.fedavg import FedAvg, fedavg_weights
from fellrec.federation.strategies.fedprox import FedProx
from fellrec.federation.strategies.fellrec import FellRec, cosine_matrix, flatten_states, similarity_weights
from fellrec.federation.strategies.local import Local
from fellrec.federation.strategies.similarity import SIMILARITY_ON, lora_pairs, similarity_matrix

__all__ = ["SIMILARITY_ON", "STRATEGIES", "Centralized", "FedAvg", "FedProx", "FellRec", "Local", "State", "Strategy",
           "build_strategy", "cosine_matrix", "fedavg_weights", "flatten_states", "lora_pairs", "similarity_matrix",
           "similarity_weights", "strategy_options"]
