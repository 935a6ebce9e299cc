#!/usr/bin/env bash
# Regenerates the committed protobuf and gRPC code from proto/. Run by hand after editing a .proto
# file and commit the result; CI never runs protoc.
#   Sources/AgentProtocol/Generated/  limiquantix/agent/v1/agent.proto (messages only)
#   Sources/LQXTypes/Generated/       limiquantix/types/v1/{vm,guest}.proto (types node.v1 and compute.v1 share)
#   Sources/NodeAPI/Generated/        limiquantix/node/v1/node.proto (messages + gRPC service; no agent.v1 import)
#   Sources/ControlPlaneAPI/Generated/ limiquantix/compute/v1/compute.proto (the cluster API)
# Needs: apt-get install protobuf-compiler; builds protoc-gen-swift (swift-protobuf 1.39.0) and
# protoc-gen-grpc-swift-2 (grpc-swift-protobuf 2.4.1) from the package sources.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
PLUGIN_DIR=${PLUGIN_DIR:-.build-protoc}
mkdir -p "$PLUGIN_DIR"
plugin() { # NAME REPO VERSION PRODUCT
    local dir="$PLUGIN_DIR/$1"
    if [ ! -x "$dir/.build/release/$4" ]; then
        [ -d "$dir" ] || git clone -q "$2" "$dir"
        git -C "$dir" checkout -q "$3"
        (cd "$dir" && swift build -c release --product "$4") >&2
    fi
    echo "$dir/.build/release/$4"
}
swift_plugin=$(plugin swift-protobuf https://github.com/apple/swift-protobuf 1.39.0 protoc-gen-swift)
grpc_plugin=$(plugin grpc-swift-protobuf https://github.com/grpc/grpc-swift-protobuf 2.4.1 protoc-gen-grpc-swift-2)

protoc --plugin=protoc-gen-swift="$swift_plugin" \
    --swift_out=Sources/AgentProtocol/Generated --swift_opt=Visibility=Public \
    -I proto proto/limiquantix/agent/v1/agent.proto

# The cluster's APIs share limiquantix.types.v1 (module LQXTypes); node.proto does not import
# agent.proto: the node API is versioned apart from the guest protocol.
mappings=ProtoPathModuleMappings=proto/module-mappings.asciipb
mkdir -p Sources/LQXTypes/Generated Sources/NodeAPI/Generated Sources/ControlPlaneAPI/Generated
protoc --plugin=protoc-gen-swift="$swift_plugin" \
    --swift_out=Sources/LQXTypes/Generated --swift_opt=Visibility=Public \
    -I proto proto/limiquantix/types/v1/vm.proto proto/limiquantix/types/v1/guest.proto
for api in "node/v1/node.proto:NodeAPI" "compute/v1/compute.proto:ControlPlaneAPI"; do
    protoc --plugin=protoc-gen-swift="$swift_plugin" --plugin=protoc-gen-grpc-swift-2="$grpc_plugin" \
        --swift_out="Sources/${api#*:}/Generated" --swift_opt=Visibility=Public,$mappings \
        --grpc-swift-2_out="Sources/${api#*:}/Generated" \
        --grpc-swift-2_opt=Visibility=Public,Server=true,Client=true,$mappings \
        -I proto "proto/limiquantix/${api%%:*}"
done
swift format -i -r Sources/AgentProtocol/Generated Sources/LQXTypes/Generated Sources/NodeAPI/Generated \
    Sources/ControlPlaneAPI/Generated
echo "generated Sources/{AgentProtocol,LQXTypes,NodeAPI,ControlPlaneAPI}/Generated"
