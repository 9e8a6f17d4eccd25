"""The models package: the zoo of the FedDF paper behind one registry (zoo.py) and saved classifiers (classifier.py).

    python -c "from feddf.models import get_model; m = get_model('resnet8', 10, 1); print(sum(p.numel() for p in m.parameters()))"

Besides the zoo names, `get_model` takes `pkg.module:factory` and `timm:NAME` specs (spec.py).
"""
from __future__ import annotations

from feddf.models.classifier import Classifier, load_classifier, save_classifier
from feddf.models.layers import NORMS
from feddf.models.spec import check_output, describe_arch
from feddf.models.zoo import MODELS, REGISTRY, check_arch, get_model  # noqa: F401 (REGISTRY: the zoo's names)

__all__ = ["MODELS", "NORMS", "Classifier", "check_arch", "check_output", "describe_arch", "get_model",
           "load_classifier", "save_classifier"]
