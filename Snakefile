"""ssdlite-coco: pretrain MobileNetV2-SSDLite on COCO with Caffe-SSD, from data to mAP."""

import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")

# Rules run thin scripts over the ssdlite_coco package that lives next to this file.
sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])
)
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
