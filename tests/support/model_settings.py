"""The `model` and `solver` settings a test hands the model stage: the schema's defaults but for the keys it gives.

Import it after ``require_caffe()``: the generator's options need pycaffe's protobuf classes.
"""

from __future__ import annotations

import dataclasses
import json

from ssdlite_coco.common.settings import parse_settings
from ssdlite_coco.model.heads import PriorDesign
from ssdlite_coco.model.nets import ModelOptions
from ssdlite_coco.model.settings import ModelSettings, SolverSettings

# The data the generated nets read when a test names none: rule make_model's.
DEFAULT_DATA = {
    "train_source": "results/lmdb/trainval_lmdb",
    "test_source": "results/lmdb/test_lmdb",
    "label_map_file": "results/labelmap/labelmap.prototxt",
    "name_size_file": None,
}


def solver_settings(**keys) -> SolverSettings:
    """Rule make_model's solver settings with these keys of the `solver` section (the others: schema defaults)."""
    return parse_settings(SolverSettings, json.dumps(keys))


def model_options(**options) -> ModelOptions:
    """The generator's options for the schema's `model` defaults, 81 classes and ``DEFAULT_DATA``, but for
    ``options`` (checked as ModelOptions checks them: ModelError)."""
    defaults = ModelOptions.from_settings(parse_settings(ModelSettings), 81, **DEFAULT_DATA)
    return dataclasses.replace(defaults, **options)


def prior_design(**keys) -> PriorDesign:
    """The schema's `model.priors` but for these keys."""
    return dataclasses.replace(model_options().priors, **keys)
