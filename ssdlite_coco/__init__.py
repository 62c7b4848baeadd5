"""ssdlite-coco: the workflow's logic, importable and testable without Snakemake."""
