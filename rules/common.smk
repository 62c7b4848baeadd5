# The paths every stage shares, the config sections, and the input/parameter functions of the rules
# (snakemake --lint wants functions apart from rules). Included first by the Snakefile.
import glob
import os
import json

from ssdlite_coco.dataset.coco2017 import SPLIT_TO_COCO, archive_url
from ssdlite_coco.common.resources import rule_resources, rule_threads
from ssdlite_coco.export.edge.environment import TOOLCHAINS

DATASET = config["dataset"]
LABELMAP = config["labelmap"]
LMDB = config["lmdb"]
MODEL = config["model"]
PATCH_ROLES = ("train", "test", "deploy", "solver")
TRAIN = config["train"]
EVALUATE = config["evaluate"]
EXPORT = config["export"]
# The runtimes of export.runtimes that are edge toolchains (each in its own venv, models in edge/<name>/).
EDGE_RUNTIMES = [name for name in EXPORT["runtimes"] if name in TOOLCHAINS]


def workflow_file(*parts):
    """A file of the checkout, relative to the working directory: `caffe/source.json` when Snakemake runs in
    the checkout (so that a copied checkout keeps its results), a longer path under --directory.
    """
    return os.path.relpath(os.path.join(workflow.basedir, *parts))


# --- paths between stages -----------------------------------------------------------------------
CAFFE_MANIFEST = "resources/caffe/manifest.json"
SPLIT_INSTANCES = "results/data/{split}/instances.json"
SPLIT_IMAGES = "results/data/{split}/images"
TEST_INSTANCES = SPLIT_INSTANCES.format(split="test")
TEST_IMAGES = SPLIT_IMAGES.format(split="test")
COCO_ANNOTATIONS_ZIP = "resources/downloads/annotations_trainval2017.zip"
LABELMAP_FILE = "results/labelmap/labelmap.prototxt"
NAME_SIZE_FILE = "results/labelmap/{split}_name_size.txt"
TEST_NAME_SIZE = NAME_SIZE_FILE.format(split="test")
SPLIT_LMDB = "results/lmdb/{split}_lmdb"
TRAIN_LMDB = SPLIT_LMDB.format(split="trainval")
TEST_LMDB = SPLIT_LMDB.format(split="test")
MODEL_DIR = "results/model"
TRAIN_NET = f"{MODEL_DIR}/train.prototxt"
TEST_NET = f"{MODEL_DIR}/test.prototxt"
DEPLOY_NET = f"{MODEL_DIR}/deploy.prototxt"
SOLVER = f"{MODEL_DIR}/solver.prototxt"
WEIGHTS_FORMAT = TRAIN["initial_weights_format"]
# The weights as fetched (a .pth for torchvision) and, for an ImageNet format, converted into the backbone.
INITIAL_WEIGHTS = "resources/weights/initial." + (
    "pth" if WEIGHTS_FORMAT == "torchvision" else "caffemodel"
)
CONVERTED_WEIGHTS = "resources/weights/initial_converted.caffemodel"
WEIGHTS_COVERAGE = "results/train/initial_weights_coverage.json"
TRAIN_INITIAL_WEIGHTS = (
    INITIAL_WEIGHTS if WEIGHTS_FORMAT == "caffe" else CONVERTED_WEIGHTS
)
SNAPSHOT_ROOT = "resources/snapshots"
TRAINED_WEIGHTS = "results/train/final.caffemodel"
TRAIN_LOG_CSV = "results/train/train_log.csv"
DETECTIONS = "results/evaluate/detections.json"
METRICS_JSON = "results/evaluate/metrics.json"
EXPORT_DIR = "results/export"
EXPORT_WEIGHTS = f"{EXPORT_DIR}/caffe/deploy.caffemodel"
EXPORT_VERIFY = f"{EXPORT_DIR}/verify.json"
EXPORT_INT8_DIR = f"{EXPORT_DIR}/int8"
EXPORT_INT8 = f"{EXPORT_INT8_DIR}/int8.json"
# The default target asks the export stage for the checked export and, unless export.int8 is off, INT8 models.
# The edge toolchains' converted models: asked for by the default target, so that adding a runtime to
# export.runtimes re-runs the check.
EDGE_DIRS = [f"{EXPORT_DIR}/edge/{name}" for name in EDGE_RUNTIMES]
EXPORT_TARGETS = [EXPORT_VERIFY, *EDGE_DIRS] + ([EXPORT_INT8] if EXPORT["int8"] else [])
REPORT_TARGETS = [
    "results/report/loss.png",
    "results/report/export.html",
    "results/report/prior_coverage.html",
] + (["results/report/int8.html"] if EXPORT["int8"] else [])

# What the test net reads on the test split: inputs and flags of rules evaluate and check_initial_weights.
TEST_SPLIT_INPUTS = {
    "caffe": CAFFE_MANIFEST,
    "test_net": TEST_NET,
    "lmdb": TEST_LMDB,
    "name_size": TEST_NAME_SIZE,
    "labelmap": LABELMAP_FILE,
    "instances": TEST_INSTANCES,
}
TEST_SPLIT_FLAGS = (
    " --test-net {input.test_net} --lmdb {input.lmdb} --name-size {input.name_size}"
    " --labelmap {input.labelmap} --instances {input.instances}"
)


# --- dataset -----------------------------------------------------------------------------------


def coco_split_of(wildcards):
    return SPLIT_TO_COCO[wildcards.split]


def coco_images_archive(wildcards):
    return f"resources/downloads/{SPLIT_TO_COCO[wildcards.split]}.zip"


def coco_images_cache(wildcards):
    return f"resources/downloads/{SPLIT_TO_COCO[wildcards.split]}-images"


def coco_archive_url(wildcards):
    return archive_url(wildcards.archive, DATASET["download"]["base_url"])


def coco_archive_sha1(wildcards):
    return DATASET["download"]["sha1"][wildcards.archive]


def local_path(split, key):
    value = DATASET["local"][split][key]
    if not value:
        raise ValueError(
            f"config dataset.local.{split}.{key} is empty: with dataset.source 'local' set it to the "
            f"{'images folder' if key == 'images' else 'COCO instances JSON'} of the {split} split "
            "(see config/README.md)"
        )
    return os.path.abspath(os.path.expanduser(value))


def local_instances(wildcards):
    return local_path(wildcards.split, "instances")


def local_images(wildcards):
    return local_path(wildcards.split, "images")


# --- labelmap ----------------------------------------------------------------------------------


def user_labelmap_inputs(wildcards):
    """The user-supplied labelmap as an input (so that editing it reruns the rule), if there is one."""
    return [LABELMAP["file"]] if LABELMAP["file"] else []


# --- model -------------------------------------------------------------------------------------


def patched_prototxts(wildcards):
    """The user's prototxts in mode patch (so that editing one remakes the model), else nothing."""
    if MODEL["mode"] != "patch":
        return []
    return [MODEL["patch"][role] for role in PATCH_ROLES if MODEL["patch"][role]]


# --- train -------------------------------------------------------------------------------------


def caffe_rule_resources(rule_name):
    """The rule's cluster resources, with a GPU declared whenever Caffe runs on CUDA."""
    resources = rule_resources(config, rule_name)
    if TRAIN["device"] == "cuda":
        resources["gpu"] = max(1, resources.get("gpu", 0))
    return resources


def initial_weights_input(wildcards):
    """What training starts from: the weights as fetched (format caffe) or converted into the backbone."""
    return [TRAIN_INITIAL_WEIGHTS] if TRAIN["initial_weights"] else []


def weights_coverage_input(wildcards):
    """The conversion's coverage report, for check_initial_weights (none for format caffe)."""
    return [WEIGHTS_COVERAGE] if WEIGHTS_FORMAT != "caffe" else []


def weights_coverage_flag(wildcards, input):
    return f"--coverage {input.coverage}" if input.coverage else ""


def initial_weights_flag(wildcards, input):
    return f"--initial-weights {input.initial_weights}" if input.initial_weights else ""


# --- export ------------------------------------------------------------------------------------


def export_out_dir(wildcards, output):
    """The folder of rule export's outputs (that of verify.json)."""
    return os.path.dirname(output.verify)


def export_dir_of(wildcards, input):
    """The folder of rule export's outputs, as rule export_int8 reads them (that of verify.json)."""
    return os.path.dirname(input.verify)


def int8_out_dir(wildcards, output):
    """The folder of rule export_int8's outputs (that of int8.json)."""
    return os.path.dirname(output.summary)
