"""pyimg's Bazel rules: drop-in replacements for tar.bzl's mtree_spec / mtree_mutate / tar(mtree=)
and rules_py's py_image_layer, backed by the pyimg tool.

    load("@pyimg_rules//:defs.bzl", "mtree_mutate", "mtree_spec", "mutate", "py_image_layer", "pyimg_layer")
"""

load("//private:layer.bzl", _pyimg_layer = "pyimg_layer")
load("//private:mtree_mutate.bzl", _mtree_mutate = "mtree_mutate", _mutate = "mutate")
load("//private:mtree_spec.bzl", _mtree_spec = "mtree_spec")
load("//private:py_image_layer.bzl", _PyImageLayerInfo = "PyImageLayerInfo", _py_image_layer = "py_image_layer")

mtree_spec = _mtree_spec
mtree_mutate = _mtree_mutate
mutate = _mutate
pyimg_layer = _pyimg_layer
py_image_layer = _py_image_layer
PyImageLayerInfo = _PyImageLayerInfo
