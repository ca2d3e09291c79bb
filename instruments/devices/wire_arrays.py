"""Arrays on the wire: DTMicroscope's `(array.tolist(), shape, dtype_str)` tuples, our
Pyro5 binary form `{"data": bytes, "shape": [...], "dtype": str}` (C order, native dtype),
and the netstring protocol's buffer references `{"__array__": i, "shape", "dtype"}` whose
bytes travel as the i-th raw netstring after the JSON reply."""

from __future__ import annotations

from typing import Any

import numpy as np

from instruments.devices.errors import ProtocolError


def to_tuple(array: np.ndarray) -> tuple[Any, tuple[int, ...], str]:
    """The form DTMicroscope's servers return: (nested list, shape, dtype string)."""
    array = np.asarray(array)
    return array.tolist(), array.shape, str(array.dtype)


def to_binary(array: np.ndarray) -> dict[str, Any]:
    """Raw bytes plus shape and dtype; carried natively by Pyro5's msgpack serializer."""
    array = np.asarray(array)
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # (np.ascontiguousarray would turn 0-d into 1-d)
    return {"data": array.tobytes(), "shape": list(array.shape), "dtype": array.dtype.str}


def _dtype(name: Any, where: str) -> np.dtype:
    try:
        dtype = np.dtype(name)
    except TypeError as exc:
        raise ProtocolError(f"unknown dtype {name!r} in array reply", where) from exc
    if dtype.kind not in "biufc":
        raise ProtocolError(f"non-numeric dtype {dtype} in array reply", where)
    return dtype


def _shape(shape: Any, where: str) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
            isinstance(n, int) and n >= 0 for n in shape):
        raise ProtocolError(f"malformed shape {shape!r} in array reply", where)
    return tuple(shape)


def from_tuple(reply: Any, where: str = "") -> np.ndarray:
    """Decode a `(list, shape, dtype)` reply (tuple or list) into a numpy array."""
    if not isinstance(reply, list | tuple) or len(reply) != 3:
        raise ProtocolError(
            f"expected a (list, shape, dtype) triple, got {type(reply).__name__}", where)
    values, shape, dtype_name = reply
    shape_t, dtype = _shape(shape, where), _dtype(dtype_name, where)
    try:
        return np.array(values, dtype=dtype).reshape(shape_t)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"array values do not fit shape {shape_t} / dtype {dtype}: "
                            f"{exc}", where) from exc


def from_binary(reply: Any, where: str = "") -> np.ndarray:
    """Decode a binary array reply into a (writable) numpy array."""
    if not isinstance(reply, dict) or not {"data", "shape", "dtype"} <= reply.keys():
        raise ProtocolError("expected a binary array reply with data, shape and dtype", where)
    data = reply["data"]
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"binary array data is {type(data).__name__}, not bytes "
                            "(was the msgpack serializer used?)", where)
    shape, dtype = _shape(reply["shape"], where), _dtype(reply["dtype"], where)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ProtocolError(f"binary array has {len(data)} bytes; shape {shape} of {dtype} "
                            f"needs {expected}", where)
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def buffer_ref(index: int, array: np.ndarray) -> dict[str, Any]:
    """The JSON stand-in for an array sent as raw netstring number `index`."""
    return {"__array__": index, "shape": list(array.shape), "dtype": array.dtype.str}


def raw_bytes(array: np.ndarray) -> memoryview:
    """The array's bytes in C order, without a copy where it is already contiguous."""
    array = np.asarray(array)
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    return memoryview(array.reshape(-1).view(np.uint8))


def from_buffer(ref: dict[str, Any], buffers: list[Any], where: str = "") -> np.ndarray:
    """The array a buffer reference names (writable; shares the received buffer)."""
    index = ref.get("__array__")
    if not isinstance(index, int) or not 0 <= index < len(buffers):
        raise ProtocolError(f"buffer reference {index!r} names none of the {len(buffers)} "
                            "buffers sent", where)
    shape, dtype = _shape(ref.get("shape"), where), _dtype(ref.get("dtype"), where)
    data = buffers[index]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ProtocolError(f"binary buffer has {len(data)} bytes; shape {shape} of {dtype} "
                            f"needs {expected}", where)
    if not isinstance(data, bytearray):
        data = bytearray(data)
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def attach_buffers(value: Any, buffers: list[Any], where: str = "") -> Any:
    """`value` with every buffer reference replaced by its array."""
    if isinstance(value, dict):
        if "__array__" in value:
            return from_buffer(value, buffers, where)
        return {k: attach_buffers(v, buffers, where) for k, v in value.items()}
    if isinstance(value, list):
        return [attach_buffers(v, buffers, where) for v in value]
    return value


def as_array(reply: Any, where: str = "") -> np.ndarray:
    """An array reply in either netstring form: already decoded, or a (list, shape, dtype)."""
    if isinstance(reply, np.ndarray):
        return reply
    return from_tuple(reply, where)
