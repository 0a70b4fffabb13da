"""Writes the hostile ONNX models the CLI must refuse with one clear error line (never a panic):
crates/deform-conv-cli/tests/data/hostile_onnx/*.onnx, plus a legitimate model whose weight lives
in an external file beside it (which must run) and one whose external file lies outside its folder.

    .venv/bin/python tools/make_hostile_onnx.py
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "deform-conv-cli", "tests", "data", "hostile_onnx")


def model(name, nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, name, inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def x(shape=(1, 1, 4, 4)):
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))


def y():
    return helper.make_tensor_value_info("y", TensorProto.FLOAT, None)


def save(m, name):
    onnx.save(m, os.path.join(OUT, name + ".onnx"))


def main():
    os.makedirs(OUT, exist_ok=True)
    # A graph output that no node produces.
    save(model("missing_output", [helper.make_node("Relu", ["x"], ["r"])], [x()],
               [helper.make_tensor_value_info("nothing", TensorProto.FLOAT, None)]), "missing_output")
    # Values far larger than any machine: ConstantOfShape, Expand, Tile, Range.
    big = numpy_helper.from_array(np.array([1 << 30, 1 << 10, 4, 4], np.int64), "shape")
    save(model("huge_constant", [helper.make_node("ConstantOfShape", ["shape"], ["c"]),
                                 helper.make_node("Add", ["x", "c"], ["y"])], [x()], [y()], [big]),
         "huge_constant")
    save(model("huge_expand", [helper.make_node("Expand", ["x", "shape"], ["y"])], [x()], [y()], [big]),
         "huge_expand")
    reps = numpy_helper.from_array(np.array([1, 1, 1 << 30, 1 << 30], np.int64), "reps")
    save(model("huge_tile", [helper.make_node("Tile", ["x", "reps"], ["y"])], [x()], [y()], [reps]), "huge_tile")
    lim = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("a", 0.0), ("b", 1e18), ("d", 1.0))]
    save(model("huge_range", [helper.make_node("Range", ["a", "b", "d"], ["r"]),
                              helper.make_node("Relu", ["x"], ["y"])],
               [x()], [y(), helper.make_tensor_value_info("r", TensorProto.FLOAT, None)], lim), "huge_range")
    # Attributes no operator can run with.
    w = numpy_helper.from_array(np.ones((1, 1, 2, 2), np.float32), "w")
    save(model("conv_stride_0", [helper.make_node("Conv", ["x", "w"], ["y"], strides=[0, 0])], [x()], [y()], [w]),
         "conv_stride_0")
    sl = [numpy_helper.from_array(np.array(v, np.int64), n)
          for n, v in (("st", [0]), ("en", [4]), ("ax", [2]), ("sp", [0]))]
    save(model("slice_step_0", [helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], [x()], [y()], sl),
         "slice_step_0")
    save(model("bad_perm", [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 5, 1, 1])], [x()], [y()]),
         "bad_perm")
    save(model("maxpool_kernel_0", [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[0, 0])], [x()], [y()]),
         "maxpool_kernel_0")
    pads = numpy_helper.from_array(np.array([0, 0, -9, -9, 0, 0, -9, -9], np.int64), "pads")
    save(model("negative_pad", [helper.make_node("Pad", ["x", "pads"], ["y"])], [x()], [y()], [pads]),
         "negative_pad")
    # Two outputs whose names become one file name once sanitised ("Y_" and "Y?" -> Y_.npy).
    save(model("colliding_outputs", [helper.make_node("Relu", ["x"], ["Y_"]), helper.make_node("Neg", ["x"], ["Y?"])],
               [x()], [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y_", "Y?")]),
         "colliding_outputs")
    # External data: a legitimate model (its weight in weights.bin beside it) and one whose
    # location climbs out of the folder.
    w2 = numpy_helper.from_array(np.full((1, 1, 1, 1), 2.0, np.float32), "w2")
    legit = model("external_inside", [helper.make_node("Conv", ["x", "w2"], ["y"])], [x()], [y()], [w2])
    onnx.save(legit, os.path.join(OUT, "external_inside.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="external_inside.bin", size_threshold=0)
    outside = onnx.load(os.path.join(OUT, "external_inside.onnx"), load_external_data=False)
    for t in outside.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../external_inside.bin"
    onnx.save(outside, os.path.join(OUT, "external_outside.onnx"))
    np.save(os.path.join(OUT, "x.npy"), np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))


if __name__ == "__main__":
    main()
