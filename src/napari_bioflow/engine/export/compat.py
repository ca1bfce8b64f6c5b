"""bioimageio.spec 0.5.12 with pydantic >= 2.12: three of its wrap serializers call `handler(value, info)`, and
pydantic-core now checks that second argument (an index key, not the SerializationInfo), so any model description
fails to validate ("'index_key' is expected to be an integer or a string"). `patch()` makes those three functions
call their handler with the value alone, which is what the handler takes; it changes nothing else and runs once."""

from __future__ import annotations

_done = False


class _DropIndex:
    """A serializer handler that ignores the misplaced second argument."""

    __slots__ = ("handler",)

    def __init__(self, handler):
        self.handler = handler

    def __call__(self, value, *_ignored):
        return self.handler(value)


def _needed() -> bool:
    from pydantic_core import SchemaSerializer, core_schema

    def wrap(value, handler, info):
        return handler(value, info)

    schema = core_schema.any_schema(serialization=core_schema.wrap_serializer_function_ser_schema(wrap, info_arg=True))
    try:
        SchemaSerializer(schema).to_python(1)
        return False
    except Exception:  # noqa: BLE001  (the check that breaks bioimageio.spec)
        return True


def _fix(fn) -> None:
    """Swap the code of `fn` (value, handler, info) for a call of its original code with a forgiving handler."""
    import types

    if fn.__code__.co_argcount != 3 or fn.__code__.co_freevars:
        return
    g = fn.__globals__
    original = types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__)
    key = f"_bioflow_original_{fn.__name__}_{id(fn)}"
    g[key], g["_BioflowDropIndex"] = original, _DropIndex
    namespace: dict = {}
    exec(f"def shim(a, b, c):\n    return {key}(a, _BioflowDropIndex(b), c)\n", g, namespace)  # noqa: S102
    fn.__code__ = namespace["shim"].__code__


def patch() -> None:
    global _done
    if _done:
        return
    _done = True
    if not _needed():
        return
    from bioimageio.spec._internal import io_packaging, validated_string_with_inner_node
    from bioimageio.spec.model import v0_4

    _fix(io_packaging.package_file_descr_serializer)
    _fix(v0_4.package_weights)
    serialize = validated_string_with_inner_node.ValidatedStringWithInnerNode.__dict__.get("_serialize")
    _fix(getattr(serialize, "wrapped", getattr(serialize, "__func__", serialize)))
