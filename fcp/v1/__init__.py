"""Generated FCP v1 code (protoc + mypy-protobuf). Never edit by hand: run `make proto`."""
