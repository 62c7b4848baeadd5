"""Stage dataset (rules/dataset.smk): COCO-format splits in results/data/{split}/ from the demo generator, COCO 2017
(download or subset) or a local dataset.
"""
