"""salaudit: audits of how robust a classifier's saliency maps are.

The core library, imported flat from here (as Captum's `captum.attr`): models and data, the
method registry and its methods, attacks, metrics and their catalogue, the store, and the
stages of an audit. It imports neither Prefect nor Dask, so it works in a notebook as it is:

    import salaudit
    model = salaudit.load_model("builtin:digit-scenes-cnn")
    x = salaudit.load_dataset("builtin:digit-scenes").load(range(8)).image
    maps = salaudit.explain(model, x, methods=["grad", "ig", "dance-grad"])
    tree = salaudit.open("runs/audit")          # a store, as an xarray DataTree

The layers, one subpackage each (docs/architecture.md): `inputs` (models, data, selection),
`engine` (micro-batches, keyed randomness, layers, optimisers), `methods`, `attacks`,
`metrics`, `store`, `pipeline` (the spec and the stages), `report`.
"""

from .attacks.catalogue import AttackResult, attack_info, attacks, parse_attack
from .errors import RegressionFound, SalauditError, StoreConflict
from .inputs.data import Dataset, load_dataset
from .inputs.models import PixelModel, load_model
from .inputs.selection import Selection, select_samples
from .methods.context import Context
from .methods.decoys import DecoyConfig, make_decoys
from .methods.differentiable import DifferentiableMap, differentiable_methods
from .methods.registry import (
    Method,
    external_method,
    get_method,
    method_info,
    method_names,
    register,
    registry,
)
from .metrics.catalogue import Family, Variable, families, variables
from .metrics.decoys import decoy_validity
from .metrics.faithfulness import deletion_preservation, fidelity
from .metrics.localisation import box_accuracy, box_iou, localisation, threshold_box
from .metrics.masks import masked_input, saliency_mask, top_fraction
from .metrics.robustness import class_retrieval, sensitivity, spearman, topk_intersection
from .metrics.sanity import cascade_layers, cascading_randomisation, sanity_views, ssim
from .pipeline.notebook import explain, open
from .pipeline.spec import AuditSpec, load_spec, parse_spec
from .store.store import Store
from .version import __version__

__all__ = [
    "AttackResult",
    "AuditSpec",
    "Context",
    "Dataset",
    "DecoyConfig",
    "DifferentiableMap",
    "Family",
    "Method",
    "PixelModel",
    "RegressionFound",
    "SalauditError",
    "Selection",
    "Store",
    "StoreConflict",
    "Variable",
    "__version__",
    "attack_info",
    "attacks",
    "box_accuracy",
    "box_iou",
    "cascade_layers",
    "cascading_randomisation",
    "class_retrieval",
    "decoy_validity",
    "deletion_preservation",
    "differentiable_methods",
    "explain",
    "external_method",
    "families",
    "fidelity",
    "get_method",
    "load_dataset",
    "load_model",
    "load_spec",
    "localisation",
    "make_decoys",
    "masked_input",
    "method_info",
    "method_names",
    "open",
    "parse_attack",
    "parse_spec",
    "register",
    "registry",
    "saliency_mask",
    "sanity_views",
    "select_samples",
    "sensitivity",
    "spearman",
    "ssim",
    "threshold_box",
    "top_fraction",
    "topk_intersection",
    "variables",
]
