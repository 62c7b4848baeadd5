# Rules of the model stage (see models/README.md): the MobileNetV2-SSDLite train, test and deploy nets
# and the solver in results/model/, generated from the `model:` and `solver:` config sections, or the
# user's own prototxts patched onto this workflow's data (model.mode: patch). The LMDB paths are only
# written into the nets (rule train needs the LMDBs, this rule does not). The rule also reports how many
# training boxes the priors can match (prior_coverage.{json,md}) and warns when too few can.

from ssdlite_coco.common.settings import settings_json
from ssdlite_coco.model.settings import ModelSettings, SolverSettings


rule make_model:
    """Write results/model/{train,test,deploy,solver}.prototxt, the resolved model_config.json and the prior coverage."""
    input:
        caffe=CAFFE_MANIFEST,
        labelmap=LABELMAP_FILE,
        test_name_size=TEST_NAME_SIZE,
        test_instances=TEST_INSTANCES,
        train_instances=SPLIT_INSTANCES.format(split="trainval"),
        patched=patched_prototxts,
    output:
        train=TRAIN_NET,
        test=TEST_NET,
        deploy=DEPLOY_NET,
        solver=SOLVER,
        config=f"{MODEL_DIR}/model_config.json",
        coverage=f"{MODEL_DIR}/prior_coverage.json",
        coverage_md=f"{MODEL_DIR}/prior_coverage.md",
    log:
        "logs/model/make_model.log",
    conda:
        "../envs/caffe.yaml"
    resources:
        **rule_resources(config, "make_model"),
    params:
        model=settings_json(ModelSettings, MODEL),
        solver=settings_json(SolverSettings, config["solver"]),
        device=TRAIN["device"],
        train_lmdb=TRAIN_LMDB,
        test_lmdb=TEST_LMDB,
    shell:
        "logged {log} with-caffe make_model.py --model-settings={params.model:q}"
        " --solver-settings={params.solver:q} --device {params.device}"
        " --labelmap {input.labelmap} --name-size {input.test_name_size}"
        " --test-instances {input.test_instances}"
        " --train-lmdb {params.train_lmdb} --test-lmdb {params.test_lmdb}"
        " --out-train {output.train} --out-test {output.test} --out-deploy {output.deploy}"
        " --out-solver {output.solver} --config-out {output.config}"
        " --train-instances {input.train_instances}"
        " --coverage-json {output.coverage} --coverage-md {output.coverage_md}"
