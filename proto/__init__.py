"""atoll.v1 protobuf sources (``proto/v1/*.proto``) and their generated stubs.

Regenerate the stubs (committed beside the sources) with::

    python -m atoll.proto.gen

``tests/test_proto_stubs.py`` fails when the committed stubs differ from a fresh generation.
Only converter modules and servicers import the ``*_pb2`` modules.
"""
