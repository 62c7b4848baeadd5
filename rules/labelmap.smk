# Rules of the labelmap stage (see README.md): results/labelmap/labelmap.prototxt (config labelmap.mode,
# or the checked labelmap.file) and results/labelmap/{split}_name_size.txt for trainval and test.

from ssdlite_coco.common.settings import settings_json
from ssdlite_coco.labelmap import LabelmapSettings


rule make_labelmap:
    """Write the Caffe-SSD labelmap of the dataset and the name-size file (image_id height width) per split."""
    input:
        trainval=SPLIT_INSTANCES.format(split="trainval"),
        test=TEST_INSTANCES,
        user_labelmap=user_labelmap_inputs,
        caffe=CAFFE_MANIFEST,
    output:
        labelmap=LABELMAP_FILE,
        trainval_name_size=NAME_SIZE_FILE.format(split="trainval"),
        test_name_size=TEST_NAME_SIZE,
    log:
        "logs/labelmap/make_labelmap.log",
    conda:
        "../envs/caffe.yaml"
    resources:
        **rule_resources(config, "make_labelmap"),
    params:
        settings=settings_json(LabelmapSettings, LABELMAP),
    shell:
        "logged {log} with-caffe make_labelmap.py --trainval {input.trainval} --test {input.test}"
        " --settings {params.settings:q} --labelmap-out {output.labelmap}"
        " --trainval-name-size-out {output.trainval_name_size}"
        " --test-name-size-out {output.test_name_size}"
