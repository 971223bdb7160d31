"""The few ONNX protobuf messages and fields that compress.runtimes.staged_fold reads and writes, without the onnx package.

An app that reads artifacts needs onnxruntime, tokenizers and numpy only; onnxruntime brings protobuf. These classes
are built from their field numbers in onnx-ml.proto (stable: ONNX's wire format) in a descriptor pool of their own, so
they never clash with the onnx package's. Every other field is kept as it was read: protobuf carries fields a message
does not declare through a parse and a serialization unchanged, so a graph read and written here loses nothing.
"""

from __future__ import annotations

from functools import cache

EXTERNAL = 1  # TensorProto.DataLocation

# message -> (field, number, type, repeated, message type); types: google.protobuf FieldDescriptorProto.Type
_I64, _I32, _STR, _BYTES, _MSG, _F32, _F64, _U64 = 3, 5, 9, 12, 11, 2, 1, 4
_MESSAGES = {
    "ModelProto": [("ir_version", 1, _I64, 0, ""), ("opset_import", 8, _MSG, 1, "OperatorSetIdProto"), ("graph", 7, _MSG, 0, "GraphProto"),
                   ("functions", 25, _MSG, 1, "FunctionProto")],
    "OperatorSetIdProto": [("domain", 1, _STR, 0, ""), ("version", 2, _I64, 0, "")],
    "GraphProto": [("node", 1, _MSG, 1, "NodeProto"), ("name", 2, _STR, 0, ""), ("initializer", 5, _MSG, 1, "TensorProto"),
                   ("input", 11, _MSG, 1, "ValueInfoProto"), ("output", 12, _MSG, 1, "ValueInfoProto")],
    "NodeProto": [("input", 1, _STR, 1, ""), ("output", 2, _STR, 1, ""), ("name", 3, _STR, 0, ""), ("op_type", 4, _STR, 0, ""),
                  ("domain", 7, _STR, 0, ""), ("attribute", 5, _MSG, 1, "AttributeProto")],
    "AttributeProto": [("name", 1, _STR, 0, ""), ("g", 6, _MSG, 0, "GraphProto"), ("graphs", 11, _MSG, 1, "GraphProto")],
    "TensorProto": [("dims", 1, _I64, 1, ""), ("data_type", 2, _I32, 0, ""), ("float_data", 4, _F32, 1, ""), ("int32_data", 5, _I32, 1, ""),
                    ("int64_data", 7, _I64, 1, ""), ("name", 8, _STR, 0, ""), ("raw_data", 9, _BYTES, 0, ""),
                    ("double_data", 10, _F64, 1, ""), ("uint64_data", 11, _U64, 1, ""),
                    ("external_data", 13, _MSG, 1, "StringStringEntryProto"), ("data_location", 14, _I32, 0, "")],
    "StringStringEntryProto": [("key", 1, _STR, 0, ""), ("value", 2, _STR, 0, "")],
    "ValueInfoProto": [("name", 1, _STR, 0, ""), ("type", 2, _MSG, 0, "TypeProto")],
    "TypeProto": [("tensor_type", 1, _MSG, 0, "TypeProtoTensor")],
    "TypeProtoTensor": [("elem_type", 1, _I32, 0, ""), ("shape", 2, _MSG, 0, "TensorShapeProto")],
    "TensorShapeProto": [("dim", 1, _MSG, 1, "TensorShapeProtoDimension")],
    "TensorShapeProtoDimension": [("dim_value", 1, _I64, 0, ""), ("dim_param", 2, _STR, 0, "")],
    "FunctionProto": [("name", 1, _STR, 0, ""), ("input", 4, _STR, 1, ""), ("output", 5, _STR, 1, ""), ("node", 7, _MSG, 1, "NodeProto"),
                      ("opset_import", 9, _MSG, 1, "OperatorSetIdProto"), ("domain", 10, _STR, 0, "")],
}  # fmt: skip
_PACKAGE = "compress_onnx_wire"


@cache
def messages():
    """-> a namespace of message classes (ModelProto, GraphProto, NodeProto, TensorProto, ValueInfoProto, ...)."""
    from types import SimpleNamespace

    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="compress/onnx_wire.proto", package=_PACKAGE, syntax="proto2")
    for name, fields in _MESSAGES.items():
        m = f.message_type.add(name=name)
        for field, number, kind, repeated, type_name in fields:
            d = m.field.add(name=field, number=number, type=kind, label=3 if repeated else 1)
            if type_name:
                d.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return SimpleNamespace(**{n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{n}")) for n in _MESSAGES})
