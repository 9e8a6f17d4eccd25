"""feddf — FedDF ensemble distillation for federated learning, with synthetic transfer sets.

    feddf --help
"""
__version__ = "0.1.0"
