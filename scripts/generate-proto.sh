#!/usr/bin/env bash
# Regenerates Sources/AgentProtocol/Generated/*.pb.swift from proto/. Run by hand after editing a
# .proto file and commit the result; CI never runs protoc.
# Needs: apt-get install protobuf-compiler; builds protoc-gen-swift from the swift-protobuf package.
set -euo pipefail
cd "$(dirname "$0")/.."
PLUGIN_DIR=${PLUGIN_DIR:-.build-protoc}
if [ ! -x "$PLUGIN_DIR/swift-protobuf/.build/release/protoc-gen-swift" ]; then
    mkdir -p "$PLUGIN_DIR"
    [ -d "$PLUGIN_DIR/swift-protobuf" ] || git clone -q https://github.com/apple/swift-protobuf "$PLUGIN_DIR/swift-protobuf"
    git -C "$PLUGIN_DIR/swift-protobuf" checkout -q 1.39.0
    (cd "$PLUGIN_DIR/swift-protobuf" && swift build -c release --product protoc-gen-swift)
fi
protoc --plugin=protoc-gen-swift="$PLUGIN_DIR/swift-protobuf/.build/release/protoc-gen-swift" \
    --swift_out=Sources/AgentProtocol/Generated --swift_opt=Visibility=Public \
    -I proto proto/limiquantix/agent/v1/agent.proto
swift format -i -r Sources/AgentProtocol/Generated
echo "generated Sources/AgentProtocol/Generated"
