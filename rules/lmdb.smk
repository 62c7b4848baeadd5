# Rules of the lmdb stage (see README.md): results/lmdb/{split}_lmdb (Caffe LMDB of AnnotatedDatum) with
# its build report results/lmdb/{split}_build.json, and results/lmdb/{split}_check/ (stats + pictures).

from ssdlite_coco.common.settings import settings_json
from ssdlite_coco.lmdb.settings import BuildSettings, CheckSettings


rule build_lmdb:
    """Convert a split into a Caffe LMDB of AnnotatedDatum records (built aside, renamed when complete)."""
    input:
        instances=SPLIT_INSTANCES,
        images=SPLIT_IMAGES,
        labelmap=LABELMAP_FILE,
        caffe=CAFFE_MANIFEST,
    output:
        lmdb=directory(SPLIT_LMDB),
        report="results/lmdb/{split}_build.json",
    log:
        "logs/lmdb/build_lmdb_{split}.log",
    conda:
        "../envs/caffe.yaml"
    threads: rule_threads(config, "build_lmdb")
    resources:
        **rule_resources(config, "build_lmdb"),
    params:
        settings=settings_json(BuildSettings, LMDB),
    shell:
        "logged {log} with-caffe build_lmdb.py --instances {input.instances} --images {input.images}"
        " --labelmap {input.labelmap} --out {output.lmdb} --report-out {output.report}"
        " --split {wildcards.split} --settings {params.settings:q}"


rule check_lmdb:
    """Read the LMDB back, verify every record, write stats.csv, summary.csv and samples.png."""
    input:
        lmdb=SPLIT_LMDB,
        report=rules.build_lmdb.output.report,
        instances=SPLIT_INSTANCES,
        labelmap=LABELMAP_FILE,
        caffe=CAFFE_MANIFEST,
    output:
        check=directory("results/lmdb/{split}_check"),
    log:
        "logs/lmdb/check_lmdb_{split}.log",
    conda:
        "../envs/caffe.yaml"
    threads: rule_threads(config, "check_lmdb")
    resources:
        **rule_resources(config, "check_lmdb"),
    params:
        settings=settings_json(CheckSettings, LMDB),
    shell:
        "logged {log} with-caffe check_lmdb.py --lmdb {input.lmdb} --report {input.report}"
        " --instances {input.instances} --labelmap {input.labelmap} --out {output.check}"
        " --settings {params.settings:q}"
