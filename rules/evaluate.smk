# Rules of the evaluate stage (see README.md): score weights on the test split (COCO metrics with
# pycocotools + Caffe's detection_eval), check the initial weights before training, and export the
# deploy net with BatchNorm/Scale folded into the convolutions.


rule check_initial_weights:
    """Before training: the initial weights' mAP on the test split and whether their detection head looks trained."""
    input:
        **TEST_SPLIT_INPUTS,
        weights=INITIAL_WEIGHTS,
    output:
        report_json="results/evaluate/initial_weights/check.json",
        report_csv="results/evaluate/initial_weights/check.csv",
    log:
        "logs/check_initial_weights.log",
    conda:
        "../envs/caffe.yaml"
    threads: rule_threads(config, "check_initial_weights")
    resources:
        **caffe_rule_resources("check_initial_weights"),
    params:
        device=TRAIN["device"],
        batch_size=EVALUATE["batch_size"],
        chance_ap50=EVALUATE["chance_ap50"],
    shell:
        "OPENBLAS_NUM_THREADS={threads} OMP_NUM_THREADS={threads}"
        " with-caffe check_weights.py --test-net {input.test_net}"
        " --weights {input.weights} --lmdb {input.lmdb} --name-size {input.name_size}"
        " --labelmap {input.labelmap} --instances {input.instances} --device {params.device}"
        " --batch-size {params.batch_size} --chance-ap50 {params.chance_ap50}"
        " --report-json {output.report_json} --report-csv {output.report_csv} > {log} 2>&1"


rule evaluate:
    """The trained net on the test split: COCO detections, the 12 COCO numbers, per-class AP, detection_eval."""
    input:
        **TEST_SPLIT_INPUTS,
        weights="results/train/final.caffemodel",
    output:
        metrics_json=report(
            "results/evaluate/metrics.json",
            caption="../report/metrics.rst",
            category="Evaluation",
        ),
        metrics_csv="results/evaluate/metrics.csv",
        per_class_csv="results/evaluate/per_class_ap.csv",
        detections="results/evaluate/detections.json",
    log:
        "logs/evaluate.log",
    conda:
        "../envs/caffe.yaml"
    threads: rule_threads(config, "evaluate")
    resources:
        **caffe_rule_resources("evaluate"),
    params:
        device=TRAIN["device"],
        batch_size=EVALUATE["batch_size"],
    shell:
        "OPENBLAS_NUM_THREADS={threads} OMP_NUM_THREADS={threads}"
        " with-caffe evaluate.py --test-net {input.test_net}"
        " --weights {input.weights} --lmdb {input.lmdb} --name-size {input.name_size}"
        " --labelmap {input.labelmap} --instances {input.instances} --device {params.device}"
        " --batch-size {params.batch_size} --metrics-json {output.metrics_json}"
        " --metrics-csv {output.metrics_csv} --per-class-csv {output.per_class_csv}"
        " --detections {output.detections} > {log} 2>&1"


rule export_deploy:
    """deploy.prototxt + caffemodel with BatchNorm/Scale folded into the convolutions, checked on test images."""
    input:
        caffe="resources/caffe/manifest.json",
        deploy_net="results/model/deploy.prototxt",
        test_net="results/model/test.prototxt",
        weights="results/train/final.caffemodel",
        instances="results/data/test/instances.json",
        images="results/data/test/images",
    output:
        prototxt="results/deploy/deploy.prototxt",
        weights="results/deploy/deploy.caffemodel",
        check="results/deploy/fold_check.json",
    log:
        "logs/export_deploy.log",
    conda:
        "../envs/caffe.yaml"
    threads: rule_threads(config, "export_deploy")
    params:
        check_images=EVALUATE["fold_check_images"],
        tolerance=EVALUATE["fold_tolerance"],
    shell:
        "OPENBLAS_NUM_THREADS={threads} OMP_NUM_THREADS={threads}"
        " with-caffe export_deploy.py --deploy-net {input.deploy_net}"
        " --weights {input.weights} --test-net {input.test_net} --instances {input.instances}"
        " --images {input.images} --check-images {params.check_images} --tolerance {params.tolerance}"
        " --out-prototxt {output.prototxt} --out-weights {output.weights}"
        " --check-json {output.check} > {log} 2>&1"
