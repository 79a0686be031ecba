"""Hypothesis strategies that build arbitrary (often hostile) protobuf messages from descriptors:
huge and odd strings, negative and extreme numbers, NaN, unknown enum values, long lists."""

from __future__ import annotations

from google.protobuf import descriptor as D
from google.protobuf import message_factory
from hypothesis import strategies as st

TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "a" * 70_000, "../../etc/passwd", "sha256:" + "0" * 64, "\x00\xff", "READY",
                     "edge", "datacenter", "renter", "🙂" * 1000, "{input}", '{"text": 1}', "-1"]),
)
INT32 = st.one_of(st.integers(-(2 ** 31), 2 ** 31 - 1), st.sampled_from([0, -1, 1, 2 ** 31 - 1]))
INT64 = st.one_of(st.integers(-(2 ** 63), 2 ** 63 - 1), st.sampled_from([0, -1, 2 ** 62]))
UINT32 = st.integers(0, 2 ** 32 - 1)
UINT64 = st.integers(0, 2 ** 64 - 1)
DOUBLE = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1e308]))
FLOAT = st.floats(width=32, allow_nan=True, allow_infinity=True)


def _scalar(f: D.FieldDescriptor):
    t = f.type
    if t == D.FieldDescriptor.TYPE_STRING:
        return TEXT
    if t == D.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=256)
    if t == D.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (D.FieldDescriptor.TYPE_INT32, D.FieldDescriptor.TYPE_SINT32, D.FieldDescriptor.TYPE_SFIXED32):
        return INT32
    if t in (D.FieldDescriptor.TYPE_INT64, D.FieldDescriptor.TYPE_SINT64, D.FieldDescriptor.TYPE_SFIXED64):
        return INT64
    if t in (D.FieldDescriptor.TYPE_UINT32, D.FieldDescriptor.TYPE_FIXED32):
        return UINT32
    if t in (D.FieldDescriptor.TYPE_UINT64, D.FieldDescriptor.TYPE_FIXED64):
        return UINT64
    if t == D.FieldDescriptor.TYPE_DOUBLE:
        return DOUBLE
    if t == D.FieldDescriptor.TYPE_FLOAT:
        return FLOAT
    if t == D.FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 12)            # unknown values included (open enums)
    raise TypeError(t)


def message(desc: D.Descriptor, depth: int = 0):
    cls = message_factory.GetMessageClass(desc)
    fields = {}
    for f in desc.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            k, v = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            fields[f.name] = st.dictionaries(_scalar(k), _scalar(v) if v.message_type is None else st.nothing(),
                                             max_size=4)
        elif f.message_type is not None:
            if depth >= 3:
                continue
            sub = message(f.message_type, depth + 1)
            fields[f.name] = st.lists(sub, max_size=3) if f.is_repeated else sub
        else:
            s = _scalar(f)
            fields[f.name] = st.lists(s, max_size=5) if f.is_repeated else s

    @st.composite
    def build(draw):
        msg = cls()
        for name, strat in fields.items():
            if not draw(st.booleans()):
                continue
            val = draw(strat)
            f = desc.fields_by_name[name]
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                getattr(msg, name).update(val)
            elif f.is_repeated:
                if f.message_type is not None:
                    getattr(msg, name).extend(val)
                else:
                    getattr(msg, name).extend(val)
            elif f.message_type is not None:
                getattr(msg, name).CopyFrom(val)
            else:
                setattr(msg, name, val)
        return msg

    return build()
