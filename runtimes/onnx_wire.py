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


def read(path, large: int):
    """-> (ModelProto, {initializer name: its raw bytes}) of the .onnx file at `path`: the raw_data of every graph
    initializer of >= `large` bytes is left out of the parsed message and returned as a view of the file's bytes
    (memory-mapped: neither parsed nor copied), its initializer marked as external data (`HANDED_OVER`)."""
    import mmap

    with open(path, "rb") as f:
        buf = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)) if f.seek(0, 2) else memoryview(b"")
    raw: dict = {}  # initializer name -> its raw_data, left out
    try:
        skeleton = _strip(buf, 0, len(buf), {7: {5: _tensor_stripper(raw, large)}})
    except (ValueError, IndexError) as e:  # as protobuf's own parser says it
        from google.protobuf.message import DecodeError

        raise DecodeError(f"{path}: {e if isinstance(e, ValueError) else 'truncated'}: not an ONNX model") from None
    m = messages().ModelProto()
    m.ParseFromString(skeleton)
    return m, raw


HANDED_OVER = "handed-over-at-load"  # the external-data location of a tensor whose values are handed to the session


def _tensor_stripper(raw: dict, large: int):
    def strip(buf, start: int, end: int) -> bytes | None:
        """A TensorProto's bytes without its raw_data (kept in `raw` under its name, and marked as handed over), or None
        to keep it as it is."""
        fields = list(_fields(buf, start, end))
        data = [buf[s:e] for number, _, s, e, _ in fields if number == 9]  # (a field given twice: the last one counts)
        if not data or len(data[-1]) < large:
            return None
        names = [bytes(buf[s:e]).decode() for number, _, s, e, _ in fields if number == 8]
        raw[names[-1] if names else ""] = data[-1]
        kept = b"".join(bytes(buf[f0:e]) for number, _, _, e, f0 in fields if number not in (9, 13, 14))
        location = _key(1, 2) + _len(b"location") + _key(2, 2) + _len(HANDED_OVER.encode())
        return kept + _key(13, 2) + _len(location) + _key(14, 0) + bytes([EXTERNAL])

    return strip


def _strip(buf, start: int, end: int, rules: dict) -> bytes:
    """A message's bytes with the length-delimited fields `rules` names rewritten: {number: nested rules, or a function
    (buf, start, end) -> new bytes of the field's message, or None to keep it}."""
    out, kept_from = [], start
    for number, wire, s, e, f0 in _fields(buf, start, end):
        rule = rules.get(number) if wire == 2 else None
        if rule is None:
            continue
        new = _strip(buf, s, e, rule) if isinstance(rule, dict) else rule(buf, s, e)
        if new is not None:
            out += [bytes(buf[kept_from:f0]), _key(number, 2), _len(new)]
            kept_from = e
    out.append(bytes(buf[kept_from:end]))
    return b"".join(out)


def _fields(buf, start: int, end: int):
    """-> (number, wire type, value start, value end, field start) of each field of the message in buf[start:end]."""
    pos = start
    while pos < end:
        f0 = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, e = _varint(buf, pos)
            s = pos
        elif wire == 2:
            length, s = _varint(buf, pos)
            e = s + length
        elif wire in (1, 5):
            s, e = pos, pos + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {f0}")
        yield number, wire, s, e, f0
        pos = e
    if pos != end:
        raise ValueError(f"a protobuf field overruns its message at byte {end}")


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _len(payload: bytes) -> bytes:
    return _encode_varint(len(payload)) + payload
