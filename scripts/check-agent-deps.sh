#!/usr/bin/env bash
# The guest agent must not link Foundation: swift-corelibs-foundation drags in ICU (~30 MB of data)
# and more than doubles the agent's resident memory. FoundationEssentials (Data, Date) is fine.
# Fails when any object file of the agent's own modules references a symbol of module Foundation.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.build/debug}
found=0
for object in "$dir"/GuestAgent.build/*.o "$dir"/lqx_agent.build/*.o "$dir"/AgentProtocol.build/*.o; do
    if symbols=$(nm -u "$object" | grep '10Foundation'); then
        echo "$object references Foundation:" >&2
        echo "$symbols" | swift demangle | sed 's/^/    /' >&2
        found=1
    fi
done
if [ "$found" = 1 ]; then
    echo "the guest agent must use FoundationEssentials or Glibc only (see scripts/check-agent-deps.sh)" >&2
    exit 1
fi
echo "agent modules reference no Foundation symbols"
