"""ssdlite-coco: pretrain MobileNetV2-SSDLite on COCO with Caffe-SSD, from data to mAP."""

import os
import sys

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# Rules run thin scripts over the ssdlite_coco package that lives next to this file.
sys.path.insert(0, workflow.basedir)
# Rules call scripts/ by name (`with-caffe build_lmdb.py ...`), wherever the working directory is.
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])),
    PATH=os.pathsep.join([os.path.join(workflow.basedir, "scripts"), os.environ["PATH"]]),
)

from ssdlite_coco.config_check import ConfigError, validate_config

try:
    config.update(validate_config(config, os.path.join(workflow.basedir, "config", "schema.yaml")))
except ConfigError as error:
    sys.exit(f"error: {error}")
WITH_CAFFE = os.path.join(workflow.basedir, "scripts", "with-caffe")
SCRIPTS = os.path.join(workflow.basedir, "scripts")


include: "rules/caffe.smk"
include: "rules/dataset.smk"
include: "rules/labelmap.smk"
include: "rules/lmdb.smk"
include: "rules/model.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        "resources/caffe/manifest.json",
