"""Thin gRPC servicers: protobuf in, pipeline call, protobuf out."""

__all__: list[str] = []
