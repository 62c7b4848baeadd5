#!/usr/bin/env python3
"""Build (or find in the cache) the project's Caffe-SSD; see ssdlite_coco.caffe_tools.build."""

from ssdlite_coco.caffe_tools.build import get_args_parser, main
from ssdlite_coco.common.cli import run

if __name__ == "__main__":
    run(main, get_args_parser())
