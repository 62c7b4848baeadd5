"""Shared Caffe layer: the project's Caffe build, the runtime device, prototxt and caffemodel reading and writing."""
