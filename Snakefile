"""ssdlite-coco: pretrain MobileNetV2-SSDLite on COCO with Caffe-SSD, from data to mAP."""

import os
import sys

from snakemake.utils import min_version

min_version("9.0")


# The embedded demo config only when no --configfile is given: a user's file is merged over the schema's
# defaults (config/schema.yaml), never over the demo's values.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# Rules run thin scripts over the ssdlite_coco package that lives next to this file.
sys.path.insert(0, workflow.basedir)
# Rules call scripts/ by name (`with-caffe build_lmdb.py ...`), wherever the working directory is, and
# the scripts' `python3` is the interpreter that runs Snakemake (the venv's, activated or not).
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        filter(None, [workflow.basedir, os.getenv("PYTHONPATH")])
    ),
    PATH=os.pathsep.join(
        filter(
            None,
            [
                os.path.join(workflow.basedir, "scripts"),
                os.path.dirname(sys.executable),
                os.getenv("PATH"),
            ],
        )
    ),
)

from ssdlite_coco.common.config import (
    ConfigError,
    validate_config,
    write_effective_config,
)
from ssdlite_coco.dataset.coco2017 import ARCHIVE_PATHS

try:
    config.update(
        validate_config(config, os.path.join(workflow.basedir, "config", "schema.yaml"))
    )
except ConfigError as error:
    sys.exit(f"error: {error}")


onstart:
    write_effective_config(config, "results/config.effective.yaml")


# scripts/with-caffe picks the CPU or the CUDA build of Caffe from this.
os.environ.update(SSDLITE_CAFFE_DEVICE=config["caffe"]["device"])


report: "report/workflow.rst"


wildcard_constraints:
    split="trainval|test",
    archive="|".join(ARCHIVE_PATHS),


include: "rules/common.smk"
include: "rules/caffe.smk"
include: "rules/dataset.smk"
include: "rules/labelmap.smk"
include: "rules/lmdb.smk"
include: "rules/model.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/export.smk"
include: "rules/report.smk"


rule all:
    """The whole chain: checked LMDBs, trained and evaluated model, deploy export and its INT8 cost, report figures."""
    input:
        expand("results/lmdb/{split}_check", split=["trainval", "test"]),
        "results/evaluate/metrics.json",
        EXPORT_TARGETS,
        REPORT_TARGETS,
