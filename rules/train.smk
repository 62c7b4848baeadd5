# Rules of the train stage (see README.md): fetch the optional initial weights, then train through
# pycaffe from results/model/solver.prototxt. Snapshots live under resources/snapshots/, which
# Snakemake leaves alone when a job fails, so a killed training resumes from the newest one.


rule fetch_initial_weights:
    """Copy (local path) or download (URL, checked against train.initial_weights_sha256) the initial weights."""
    output:
        weights=INITIAL_WEIGHTS,
    log:
        "logs/fetch_initial_weights.log",
    conda:
        "../envs/data.yaml"
    params:
        source=TRAIN["initial_weights"],
        sha256=TRAIN["initial_weights_sha256"],
    shell:
        "fetch_weights.py --source {params.source:q} --sha256 {params.sha256:q}"
        " --out {output.weights} > {log} 2>&1"


rule train:
    """Train MobileNetV2-SSDLite with pycaffe; results/train/final.caffemodel and the log as CSV."""
    input:
        caffe="resources/caffe/manifest.json",
        solver="results/model/solver.prototxt",
        train_net="results/model/train.prototxt",
        test_net="results/model/test.prototxt",
        train_lmdb="results/lmdb/trainval_lmdb",
        test_lmdb="results/lmdb/test_lmdb",
        test_name_size="results/labelmap/test_name_size.txt",
        labelmap="results/labelmap/labelmap.prototxt",
        initial_weights=initial_weights_input,
    output:
        weights="results/train/final.caffemodel",
        log_csv="results/train/train_log.csv",
    log:
        "logs/train.log",
    conda:
        "../envs/caffe.yaml"
    threads: rule_threads(config, "train")
    resources:
        **caffe_rule_resources("train"),
    params:
        device=TRAIN["device"],
        snapshot_interval=TRAIN["snapshot_interval"],
        keep_snapshots=TRAIN["keep_snapshots"],
        initial_weights=initial_weights_flag,
    shell:
        "OPENBLAS_NUM_THREADS={threads} OMP_NUM_THREADS={threads}"
        " with-caffe train.py --solver {input.solver}"
        " --weights-out {output.weights} --log-csv {output.log_csv}"
        " --snapshot-root resources/snapshots --device {params.device}"
        " --snapshot-interval {params.snapshot_interval} --keep-snapshots {params.keep_snapshots}"
        " {params.initial_weights} > {log} 2>&1"
