#!/usr/bin/env python3
"""Build (or find in the cache) the project's Caffe-SSD; see ssdlite_coco.caffe_tools.build."""

import sys

from ssdlite_coco.caffe_tools.build import get_args_parser, main

if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
