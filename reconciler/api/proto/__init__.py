"""containerd's snapshots API: the .proto files, and the Python modules generated from them by
scripts/gen-stubs with the oldest grpcio-tools we support (committed; see docs/architecture.md,
"The gRPC stubs and the dependency floors")."""

import warnings

# protobuf 5.x warns at import when gencode is older than its runtime ("avoid checked-in
# gencode"); ours is the oldest we support on purpose, nothing an operator can act on, and
# 6.x and 7.x accept it silently. Matched on our stubs' paths: other gencode still warns.
warnings.filterwarnings(
    "ignore", message=r"Protobuf gencode version \S+ is older than the runtime version \S+ at "
    r"reconciler/api/proto/", category=UserWarning)
