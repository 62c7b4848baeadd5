# Rules of the dataset stage (see README.md): results/data/{split}/instances.json + images/ for
# split trainval and test, from the source chosen by dataset.source (demo, download, subset, local).
# Downloads run where the internet is (the submit host under SLURM); the others take seconds: all are
# local rules.

from ssdlite_coco.common.settings import settings_json
from ssdlite_coco.dataset.settings import (
    DemoSettings,
    DownloadSettings,
    LocalSettings,
    SubsetDownloadSettings,
    SubsetSettings,
)


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
        settings=settings_json(DownloadSettings, DATASET["download"]),
    shell:
        "logged {log} download_archive.py --url={params.url:q} --sha1={params.sha1:q}"
        " --settings {params.settings:q} --out {output.archive}"


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
            settings=settings_json(DemoSettings, DATASET["demo"]),
        shell:
            "logged {log} generate_demo_dataset.py --split {wildcards.split}"
            " --settings {params.settings:q}"
            " --out-instances {output.instances} --out-images {output.images}"


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
            settings=settings_json(SubsetSettings, DATASET["subset"]),
            download_settings=settings_json(SubsetDownloadSettings, DATASET["download"]),
            cache_dir=coco_images_cache,
        shell:
            "logged {log} fetch_subset.py --annotations-zip {input.annotations}"
            " --split {wildcards.split} --settings {params.settings:q}"
            " --download-settings {params.download_settings:q}"
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
            settings=settings_json(LocalSettings, DATASET["local"]),
        shell:
            "logged {log} link_local_dataset.py --instances {input.instances:q}"
            " --images {input.images:q} --settings {params.settings:q}"
            " --out-instances {output.instances} --out-images {output.images}"
