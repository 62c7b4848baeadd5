# Imports, config sections and the input/parameter functions of the rules, by stage
# (snakemake --lint wants functions apart from rules). Included first by the Snakefile.
import glob
import json

from ssdlite_coco.dataset.coco2017 import ARCHIVE_PATHS, SPLIT_TO_COCO, archive_url
from ssdlite_coco.common.resources import rule_resources, rule_threads

DATASET = config["dataset"]
DATASET_SPLITS = "trainval|test"
LABELMAP = config["labelmap"]
LMDB = config["lmdb"]
LMDB_SPLITS = "trainval|test"
MODEL = config["model"]
PATCH_ROLES = ("train", "test", "deploy", "solver")
TRAIN = config["train"]
INITIAL_WEIGHTS = "resources/weights/initial.caffemodel"
EVALUATE = config["evaluate"]
TEST_SPLIT_INPUTS = {
    "caffe": "resources/caffe/manifest.json",
    "test_net": "results/model/test.prototxt",
    "lmdb": "results/lmdb/test_lmdb",
    "name_size": "results/labelmap/test_name_size.txt",
    "labelmap": "results/labelmap/labelmap.prototxt",
    "instances": "results/data/test/instances.json",
}


# --- dataset -----------------------------------------------------------------------------------


def demo_image_count(wildcards):
    return DATASET["demo"][f"{wildcards.split}_images"]


def subset_image_count(wildcards):
    return DATASET["subset"][f"{wildcards.split}_images"]


def coco_split_of(wildcards):
    return SPLIT_TO_COCO[wildcards.split]


def coco_images_archive(wildcards):
    return f"resources/downloads/{SPLIT_TO_COCO[wildcards.split]}.zip"


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


# --- lmdb --------------------------------------------------------------------------------------


def lmdb_shuffle_option(wildcards):
    """Trainval is shuffled with lmdb.shuffle_seed; test keeps image id order (the name-size file's)."""
    return (
        f"--shuffle-seed {LMDB['shuffle_seed']}"
        if wildcards.split == "trainval"
        else ""
    )


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
    return [INITIAL_WEIGHTS] if TRAIN["initial_weights"] else []


def initial_weights_flag(wildcards, input):
    return f"--initial-weights {input.initial_weights}" if input.initial_weights else ""
