# Rules of the dataset stage (see README.md): results/data/{split}/instances.json + images/ for
# split trainval and test, from the source chosen by dataset.source (demo, download, subset, local).
# Downloads run where the internet is (the submit host under SLURM); the others take seconds: all are
# local rules.


# Archives of COCO 2017 (download and subset sources). Bytes accumulate in {archive}.zip.part, which
# is not an output, so an interrupted download resumes on the next run.
rule dataset_download_archive:
    output:
        archive="resources/downloads/{archive}.zip",
    log:
        "logs/dataset/dataset_download_archive_{archive}.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    resources:
        **rule_resources(config, "dataset_download_archive"),
    params:
        url=coco_archive_url,
        sha1=coco_archive_sha1,
        retries=DATASET["download"]["retries"],
    shell:
        "logged {log} download_archive.py --url={params.url:q} --sha1={params.sha1:q}"
        " --retries {params.retries} --out {output.archive}"


if DATASET["source"] == "demo":

    rule dataset_demo:
        """Generate the demo dataset (coloured shapes; the embedded default)."""
        output:
            instances=SPLIT_INSTANCES,
            images=directory(SPLIT_IMAGES),
        log:
            "logs/dataset/dataset_demo_{split}.log",
        localrule: True
        conda:
            "../envs/data.yaml"
        resources:
            **rule_resources(config, "dataset_demo"),
        params:
            images=demo_image_count,
            seed=DATASET["demo"]["seed"],
        shell:
            "logged {log} generate_demo_dataset.py --split {wildcards.split} --images {params.images}"
            " --seed {params.seed} --out-instances {output.instances} --out-images {output.images}"


if DATASET["source"] == "download":

    rule dataset_extract:
        """Extract a split of COCO 2017 from the downloaded archives (trainval: train2017, test: val2017)."""
        input:
            images=coco_images_archive,
            annotations=COCO_ANNOTATIONS_ZIP,
        output:
            instances=SPLIT_INSTANCES,
            images=directory(SPLIT_IMAGES),
        log:
            "logs/dataset/dataset_extract_{split}.log",
        conda:
            "../envs/data.yaml"
        resources:
            **rule_resources(config, "dataset_extract"),
        params:
            coco_split=coco_split_of,
        shell:
            "logged {log} extract_dataset.py --images-zip {input.images}"
            " --annotations-zip {input.annotations} --coco-split {params.coco_split}"
            " --out-instances {output.instances} --out-images {output.images}"


if DATASET["source"] == "subset":

    rule dataset_subset:
        """Fetch N images of a COCO 2017 split one by one (cached under resources/downloads/)."""
        input:
            annotations=COCO_ANNOTATIONS_ZIP,
        output:
            instances=SPLIT_INSTANCES,
            images=directory(SPLIT_IMAGES),
        log:
            "logs/dataset/dataset_subset_{split}.log",
        localrule: True
        conda:
            "../envs/data.yaml"
        resources:
            **rule_resources(config, "dataset_subset"),
        params:
            coco_split=coco_split_of,
            images=subset_image_count,
            seed=DATASET["subset"]["seed"],
            base_url=DATASET["download"]["base_url"],
            retries=DATASET["download"]["retries"],
            cache_dir=coco_images_cache,
        shell:
            "logged {log} fetch_subset.py --annotations-zip {input.annotations}"
            " --coco-split {params.coco_split} --images {params.images} --seed {params.seed}"
            " --base-url={params.base_url:q} --retries {params.retries}"
            " --cache-dir {params.cache_dir}"
            " --out-instances {output.instances} --out-images {output.images}"


if DATASET["source"] == "local":

    rule dataset_local:
        """Validate a COCO-format dataset on disk and link it in (images stays a symlink)."""
        input:
            instances=local_instances,
            images=local_images,
        output:
            instances=SPLIT_INSTANCES,
            images=directory(SPLIT_IMAGES),
        log:
            "logs/dataset/dataset_local_{split}.log",
        localrule: True
        conda:
            "../envs/data.yaml"
        resources:
            **rule_resources(config, "dataset_local"),
        params:
            check_images=DATASET["local"]["check_images"],
        shell:
            "logged {log} link_local_dataset.py --instances {input.instances:q}"
            " --images {input.images:q} --check-images {params.check_images}"
            " --out-instances {output.instances} --out-images {output.images}"
