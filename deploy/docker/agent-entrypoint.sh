#!/bin/sh
# Entry point of the agent images: run `atoll agent`, writing node.yaml from ATOLL_NODE_*
# variables first when ATOLL_CONFIG does not name an existing file (a DaemonSet gives every
# host the same pod spec, so the node's name comes from the Kubernetes node name).
#   ATOLL_NODE_NAME (default: hostname)  ATOLL_NODE_TIER (datacenter)  ATOLL_NODE_REGION (default)
#   ATOLL_NODE_ZONE ("")  ATOLL_NODE_PRICE_PER_HOUR (0)  ATOLL_NODE_PREEMPTIBLE (false)
#   ATOLL_NODE_HARDWARE (planner hardware class label, e.g. a100; unset: none)
set -eu
config="${ATOLL_CONFIG:-}"
if [ -z "$config" ] || [ ! -f "$config" ]; then
  config="${config:-/tmp/atoll-node.yaml}"
  mkdir -p "$(dirname "$config")"
  {
    echo "name: \"${ATOLL_NODE_NAME:-$(hostname)}\""
    echo "tier: \"${ATOLL_NODE_TIER:-datacenter}\""
    echo "region: \"${ATOLL_NODE_REGION:-default}\""
    echo "zone: \"${ATOLL_NODE_ZONE:-}\""
    echo "price_per_hour: ${ATOLL_NODE_PRICE_PER_HOUR:-0}"
    echo "preemptible: ${ATOLL_NODE_PREEMPTIBLE:-false}"
    if [ -n "${ATOLL_NODE_HARDWARE:-}" ]; then
      echo "labels: {hardware: \"${ATOLL_NODE_HARDWARE}\"}"
    fi
  } > "$config"
  export ATOLL_CONFIG="$config"
fi
exec atoll agent "$@"
