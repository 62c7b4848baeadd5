# Rules of the train stage (see README.md): fetch the optional initial weights and check them on the
# test split, then train through pycaffe from results/model/solver.prototxt. Snapshots live under
# resources/snapshots/, which Snakemake leaves alone when a job fails, so a killed training resumes
# from the newest one.

from ssdlite_coco.common.settings import settings_json
from ssdlite_coco.evaluate.settings import InitialWeightsCheckSettings
from ssdlite_coco.train.settings import (
    ConvertWeightsSettings,
    FetchWeightsSettings,
    TrainSettings,
)


rule fetch_initial_weights:
    """Copy (local path) or download (URL, checked against train.initial_weights_sha256) the initial weights."""
    output:
        weights=INITIAL_WEIGHTS,
    log:
        "logs/train/fetch_initial_weights.log",
    conda:
        "../envs/data.yaml"
    resources:
        **rule_resources(config, "fetch_initial_weights"),
    params:
        settings=settings_json(FetchWeightsSettings, TRAIN),
    shell:
        "logged {log} fetch_weights.py --settings {params.settings:q} --out {output.weights}"


rule convert_initial_weights:
    """ImageNet weights (train.initial_weights_format torchvision or shicai) into the net's backbone, with a coverage table."""
    input:
        caffe=CAFFE_MANIFEST,
        weights=INITIAL_WEIGHTS,
        net=TRAIN_NET,
    output:
        weights=CONVERTED_WEIGHTS,
        coverage_json=WEIGHTS_COVERAGE,
        coverage_txt="results/train/initial_weights_coverage.txt",
    log:
        "logs/train/convert_initial_weights.log",
    conda:
        "../envs/caffe.yaml"
    threads: rule_threads(config, "convert_initial_weights")
    resources:
        **rule_resources(config, "convert_initial_weights"),
    params:
        settings=settings_json(ConvertWeightsSettings, TRAIN),
    shell:
        "logged {log} with-caffe --threads {threads} convert_weights.py --settings {params.settings:q}"
        " --weights {input.weights} --net {input.net} --out {output.weights}"
        " --coverage-json {output.coverage_json} --coverage-txt {output.coverage_txt}"


rule check_initial_weights:
    """Before training: the initial weights' mAP on the test split, whether their detection head looks trained, their backbone coverage."""
    input:
        **TEST_SPLIT_INPUTS,
        weights=TRAIN_INITIAL_WEIGHTS,
        coverage=weights_coverage_input,
    output:
        report_json="results/train/initial_weights_check.json",
        report_csv="results/train/initial_weights_check.csv",
    log:
        "logs/train/check_initial_weights.log",
    conda:
        "../envs/caffe.yaml"
    threads: rule_threads(config, "check_initial_weights")
    resources:
        **caffe_rule_resources("check_initial_weights"),
    params:
        device=TRAIN["device"],
        settings=settings_json(InitialWeightsCheckSettings, EVALUATE),
        coverage=weights_coverage_flag,
    shell:
        "logged {log} with-caffe --threads {threads} check_weights.py --weights {input.weights}"
        " {params.coverage} --device {params.device} --settings {params.settings:q} --data-threads {threads}"
        + TEST_SPLIT_FLAGS
        + " --report-json {output.report_json} --report-csv {output.report_csv}"


rule train:
    """Train MobileNetV2-SSDLite with pycaffe; results/train/final.caffemodel and the log as CSV."""
    input:
        caffe=CAFFE_MANIFEST,
        solver=SOLVER,
        train_net=TRAIN_NET,
        test_net=TEST_NET,
        train_lmdb=TRAIN_LMDB,
        test_lmdb=TEST_LMDB,
        # Training starts only on LMDBs whose every record was read back and decoded (rule check_lmdb).
        lmdb_checks=expand(rules.check_lmdb.output.check, split=["trainval", "test"]),
        test_name_size=TEST_NAME_SIZE,
        labelmap=LABELMAP_FILE,
        initial_weights=initial_weights_input,
    output:
        weights=TRAINED_WEIGHTS,
        log_csv=TRAIN_LOG_CSV,
    log:
        "logs/train/train.log",
    conda:
        "../envs/caffe.yaml"
    threads: rule_threads(config, "train")
    resources:
        **caffe_rule_resources("train"),
    params:
        snapshot_root=SNAPSHOT_ROOT,
        settings=settings_json(TrainSettings, TRAIN),
        initial_weights=initial_weights_flag,
    shell:
        "logged {log} with-caffe --threads {threads} train.py --solver {input.solver}"
        " --weights-out {output.weights} --log-csv {output.log_csv}"
        " --snapshot-root {params.snapshot_root} --settings {params.settings:q}"
        " --threads {threads} {params.initial_weights}"
