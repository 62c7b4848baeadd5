# Rules of the train stage (see README.md): fetch the optional initial weights and check them on the
# test split, then train through pycaffe from results/model/solver.prototxt. Snapshots live under
# resources/snapshots/, which Snakemake leaves alone when a job fails, so a killed training resumes
# from the newest one.


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
        source=TRAIN["initial_weights"],
        sha256=TRAIN["initial_weights_sha256"],
    shell:
        "logged {log} fetch_weights.py --source={params.source:q} --sha256={params.sha256:q}"
        " --out {output.weights}"


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
        format=WEIGHTS_FORMAT,
    shell:
        "logged {log} with-caffe --threads {threads} convert_weights.py --format {params.format}"
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
        batch_size=EVALUATE["batch_size"],
        chance_ap50=EVALUATE["chance_ap50"],
        coverage=weights_coverage_flag,
    shell:
        "logged {log} with-caffe --threads {threads} check_weights.py --weights {input.weights}"
        " {params.coverage}"
        + TEST_SPLIT_FLAGS
        + (
            " --chance-ap50 {params.chance_ap50}"
            " --report-json {output.report_json} --report-csv {output.report_csv}"
        )


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
        device=TRAIN["device"],
        snapshot_root=SNAPSHOT_ROOT,
        snapshot_interval=TRAIN["snapshot_interval"],
        keep_snapshots=TRAIN["keep_snapshots"],
        data_threads=data_threads_flag,
        divergence_factor=TRAIN["divergence_factor"],
        divergence_displays=TRAIN["divergence_displays"],
        initial_weights=initial_weights_flag,
    shell:
        "logged {log} with-caffe --threads {threads} train.py --solver {input.solver}"
        " --weights-out {output.weights} --log-csv {output.log_csv}"
        " --snapshot-root {params.snapshot_root} --device {params.device}"
        " --snapshot-interval {params.snapshot_interval} --keep-snapshots {params.keep_snapshots}"
        " --data-threads {params.data_threads} --divergence-factor {params.divergence_factor}"
        " --divergence-displays {params.divergence_displays} {params.initial_weights}"
