"""Hypothesis strategies for any request of the five services, derived from the protos' descriptors: odd,
huge and control-character strings, empty and huge lists, extreme and non-finite numbers, unknown enum
values, unknown fields; ids drawn partly from the real catalog so calls reach deep paths. Writes touch only
ids that start with `fuzz-`, so the shared suite's data stays as the other tests expect it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, message, struct_pb2, timestamp_pb2
from hypothesis import strategies as st

from recsys.embedding.v1 import embedding_pb2
from recsys.gateway.v1 import gateway_pb2
from recsys.preprocessor.v1 import preprocessor_pb2
from recsys.ranker.v1 import ranker_pb2
from recsys.retriever.v1 import retriever_pb2
from services.common.server import REQUEST_ID_KEY

DIMENSION = 384
FUZZ_PREFIX = "fuzz-"
ID_FIELDS = frozenset(
    {"item_id", "item_ids", "user_id", "positive_ids", "negative_ids", "exclude_ids", "history_item_ids"}
)
WRITES = frozenset(
    {
        "/recsys.gateway.v1.GatewayService/UpsertItems",
        "/recsys.gateway.v1.GatewayService/RecordEvents",
        "/recsys.gateway.v1.GatewayService/DeleteUser",
        "/recsys.retriever.v1.RetrieverService/UpsertItems",
        "/recsys.retriever.v1.RetrieverService/DeleteItems",
        "/recsys.retriever.v1.RetrieverService/AppendUserEvents",
        "/recsys.retriever.v1.RetrieverService/DeleteUser",
    }
)
MODULES = {
    "gateway": gateway_pb2,
    "preprocessor": preprocessor_pb2,
    "embedding": embedding_pb2,
    "retriever": retriever_pb2,
    "ranker": ranker_pb2,
}
# Answers that say the service works: anything but a crash (INTERNAL, UNKNOWN) or a hang.
FORBIDDEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED})

ODD = [
    "",
    " ",
    "\x00",
    "\u200b\u200d\ufeff",
    "\ud7ff\ue000\uffff",
    "👩‍👩‍👧‍👦" * 3,
    "\u202e\u0301\u0301\u0301",
    "<script>alert(1)</script>",
    "jo@example.com +1 415 555 0100",
    "Ｗａｔｅｒｐｒｏｏｆ",
    "%s%n{}{0}",
    "\r\n\t\x0b\x0c",
    "a" * 257,
]


@dataclass(frozen=True)
class Method:
    service: str  # short name: gateway, retriever, ...
    path: str  # /package.Service/Method
    request: type[message.Message]
    response: type[message.Message]


def methods(service: str) -> list[Method]:
    module = MODULES[service]
    (full,) = module.DESCRIPTOR.services_by_name.values()
    found = []
    for rpc in full.methods:
        found.append(
            Method(
                service,
                f"/{full.full_name}/{rpc.name}",
                module.__dict__[rpc.input_type.name],
                module.__dict__[rpc.output_type.name],
            )
        )
    return found


def texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40),
        st.sampled_from(ODD),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
        st.builds(
            lambda s, n: s * n, st.sampled_from(["a", "é ", "<b>x</b>", "\x00", "😀", "glue "]), st.integers(1, 40_000)
        ),
    )


def ids(known: Sequence[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(list(known)), texts(), st.sampled_from([f"{FUZZ_PREFIX}item-{n}" for n in range(3)])
    )


def numbers(kind: int) -> st.SearchStrategy[Any]:
    fd = descriptor.FieldDescriptor
    if kind in (fd.TYPE_FLOAT, fd.TYPE_DOUBLE):
        return st.one_of(
            st.floats(allow_nan=True, allow_infinity=True, width=32 if kind == fd.TYPE_FLOAT else 64),
            st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, -1e-308]),
        )
    bits, signed = {
        fd.TYPE_INT32: (32, True),
        fd.TYPE_SINT32: (32, True),
        fd.TYPE_SFIXED32: (32, True),
        fd.TYPE_INT64: (64, True),
        fd.TYPE_SINT64: (64, True),
        fd.TYPE_SFIXED64: (64, True),
        fd.TYPE_UINT32: (32, False),
        fd.TYPE_FIXED32: (32, False),
        fd.TYPE_UINT64: (64, False),
        fd.TYPE_FIXED64: (64, False),
    }[kind]
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0, 1, -1 if signed else 2, 5, 100]))


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False), texts())
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


def structs() -> st.SearchStrategy[struct_pb2.Struct]:
    keys = st.one_of(
        st.sampled_from(["brand", "price", "rating", "in_stock", "title", "popularity", "item_id"]), texts()
    )

    def build(values: dict[str, Any]) -> struct_pb2.Struct:
        struct = struct_pb2.Struct()
        struct.update(values)
        return struct

    return st.builds(build, st.dictionaries(keys, json_values(), max_size=6))


def field_values(field: descriptor.FieldDescriptor, known: Sequence[str], depth: int) -> st.SearchStrategy[Any]:
    fd = descriptor.FieldDescriptor
    if field.name in ID_FIELDS:
        return ids(known)
    if field.type == fd.TYPE_STRING:
        return texts()
    if field.type == fd.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == fd.TYPE_BOOL:
        return st.booleans()
    if field.type == fd.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-(2**31), 2**31 - 1))
    if field.type == fd.TYPE_MESSAGE:
        return requests(field.message_type, known, depth + 1)
    return numbers(field.type)


def _vectors(field: descriptor.FieldDescriptor) -> st.SearchStrategy[list[Any]]:
    """Vectors of the model's size (to reach the engine), sometimes poisoned with NaN or infinity."""
    good = st.lists(st.floats(-1, 1, width=32), min_size=DIMENSION, max_size=DIMENSION)
    poisoned = st.builds(
        lambda v, i, x: [*v[:i], x, *v[i + 1 :]], good, st.integers(0, DIMENSION - 1), numbers(field.type)
    )
    return st.one_of(good, poisoned, st.lists(numbers(field.type), max_size=8), st.just([1.0] * 100_000))


def repeated(field: descriptor.FieldDescriptor, known: Sequence[str], depth: int) -> st.SearchStrategy[list[Any]]:
    if field.type in (descriptor.FieldDescriptor.TYPE_FLOAT, descriptor.FieldDescriptor.TYPE_DOUBLE):
        return _vectors(field)
    one = field_values(field, known, depth)
    small = st.lists(one, max_size=4 if depth < 2 else 2)
    if depth > 0:
        return small
    # Huge lists only at the top and of small elements: a huge list of huge messages would take the fuzzer
    # itself gigabytes to build (it did: the first long run was killed for memory).
    element = one.filter(lambda v: _size(v) < 2_000)
    return st.one_of(small, st.builds(lambda v, n: [v] * n, element, st.sampled_from([0, 513, 1025, 5000])))


def _size(value: Any) -> int:
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, message.Message):
        return value.ByteSize()
    return 8


@st.composite
def _message(draw: st.DrawFn, desc: descriptor.Descriptor, known: Sequence[str], depth: int) -> message.Message:
    cls = _class(desc)
    if desc.full_name == "google.protobuf.Struct":
        return draw(structs())
    if desc.full_name == "google.protobuf.Timestamp":
        return timestamp_pb2.Timestamp(
            seconds=draw(numbers(descriptor.FieldDescriptor.TYPE_INT64)),
            nanos=draw(numbers(descriptor.FieldDescriptor.TYPE_INT32)),
        )
    result = cls()
    for field in desc.fields:
        if depth > 3 or not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            entries = draw(
                st.dictionaries(
                    field_values(key_field, known, depth), field_values(value_field, known, depth), max_size=4
                )
            )
            target = getattr(result, field.name)
            for key, value in entries.items():
                if value_field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif field.is_repeated:
            getattr(result, field.name).extend(draw(repeated(field, known, depth)))
        elif field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
            getattr(result, field.name).CopyFrom(draw(field_values(field, known, depth)))
        else:
            setattr(result, field.name, draw(field_values(field, known, depth)))
    return result


def _class(desc: descriptor.Descriptor) -> type[message.Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


def requests(desc: descriptor.Descriptor, known: Sequence[str], depth: int = 0) -> st.SearchStrategy[message.Message]:
    return _message(desc, known, depth)


def _confine(msg: message.Message) -> None:
    """Every id in a write request moved into the fuzz namespace."""
    for field, value in msg.ListFields():
        if field.name in ID_FIELDS:
            if field.is_repeated:
                values = [v if v.startswith(FUZZ_PREFIX) else FUZZ_PREFIX + v[:200] for v in value]
                del value[:]
                value.extend(values)
            elif not value.startswith(FUZZ_PREFIX):
                setattr(msg, field.name, FUZZ_PREFIX + value[:200])
        elif field.type == descriptor.FieldDescriptor.TYPE_MESSAGE and not (
            field.message_type.GetOptions().map_entry or field.message_type.full_name.startswith("google.protobuf")
        ):
            for child in value if field.is_repeated else [value]:
                _confine(child)


def wire_bytes(method: Method, known: Sequence[str]) -> st.SearchStrategy[bytes]:
    """A generated request, serialized, sometimes with unknown fields appended (confined for writes)."""

    def serialize(msg: message.Message, extra: bytes) -> bytes:
        if method.path in WRITES:
            _confine(msg)
        return msg.SerializeToString() + extra

    unknown = st.sampled_from([b"", b"", b"\xf8\x07\x01", b"\xfa\x3f\x03abc", b"\x85\x7d\x00\x00\x80\x7f"])
    return st.builds(serialize, requests(method.request.DESCRIPTOR, known), unknown)


def malformed() -> st.SearchStrategy[bytes]:
    """Bytes that are not a valid message of any type: truncated, wrong wire types, bad UTF-8, noise."""
    return st.one_of(
        st.binary(min_size=1, max_size=200),
        st.sampled_from(
            [
                b"\xff\xff\xff\xff",
                b"\x0a\x05ab",  # a length past the end
                b"\x0a\x02\xc3\x28",  # bad UTF-8 in field 1
                b"\x0a\xff\xff\xff\xff\x0f",  # an absurd length
                b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # an over-long varint
                b"\x0f",  # wire type 7
                b"\x00",  # field number 0
            ]
        ),
    )


def call_raw(channel: grpc.Channel, method: Method, payload: bytes, timeout_s: float = 60.0) -> grpc.StatusCode:
    """Sends bytes as they are (identity serializers) and returns the status code."""
    rpc: Callable[..., Any] = channel.unary_unary(method.path)
    try:
        rpc(payload, timeout=timeout_s, metadata=((REQUEST_ID_KEY, "fuzz"),))
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
        return code
    return grpc.StatusCode.OK
