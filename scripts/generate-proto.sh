#!/usr/bin/env bash
# Regenerates the committed protobuf and gRPC code from proto/. Run by hand after editing a .proto
# file and commit the result; CI never runs protoc.
#   Sources/AgentProtocol/Generated/  limiquantix/agent/v1/agent.proto (messages only)
#   Sources/NodeAPI/Generated/        limiquantix/node/v1/node.proto (messages + gRPC service; no agent.v1 import)
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
        (cd "$dir" && swift build -c release --product "$4")
    fi
    echo "$dir/.build/release/$4"
}
swift_plugin=$(plugin swift-protobuf https://github.com/apple/swift-protobuf 1.39.0 protoc-gen-swift)
grpc_plugin=$(plugin grpc-swift-protobuf https://github.com/grpc/grpc-swift-protobuf 2.4.1 protoc-gen-grpc-swift-2)

protoc --plugin=protoc-gen-swift="$swift_plugin" \
    --swift_out=Sources/AgentProtocol/Generated --swift_opt=Visibility=Public \
    -I proto proto/limiquantix/agent/v1/agent.proto

# node.proto has its own messages (no import of agent.proto): the node API is versioned apart.
mkdir -p Sources/NodeAPI/Generated
protoc --plugin=protoc-gen-swift="$swift_plugin" --plugin=protoc-gen-grpc-swift-2="$grpc_plugin" \
    --swift_out=Sources/NodeAPI/Generated --swift_opt=Visibility=Public \
    --grpc-swift-2_out=Sources/NodeAPI/Generated \
    --grpc-swift-2_opt=Visibility=Public,Server=true,Client=true \
    -I proto proto/limiquantix/node/v1/node.proto
swift format -i -r Sources/AgentProtocol/Generated Sources/NodeAPI/Generated
echo "generated Sources/AgentProtocol/Generated and Sources/NodeAPI/Generated"
