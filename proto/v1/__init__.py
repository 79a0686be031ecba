"""Generated atoll.v1 stubs. Do not edit: run ``python -m atoll.proto.gen``."""
