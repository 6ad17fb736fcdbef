"""containerd's snapshots API: the .proto files, and Python modules generated from them at
build time (setup.py runs grpcio-tools; the generated *_pb2*.py files are not committed)."""
