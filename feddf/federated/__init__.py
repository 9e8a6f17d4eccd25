"""Federated training and FedDF fusion: partitions, clients, FedAvg/FedProx/FedAvgM, ensemble distillation,
distillation sources, the round runner. One algorithm per module; `feddf train` (feddf/cli/train.py) drives it.

    feddf train --help
"""
