#!/usr/bin/env bash
# Write the cluster's settings (cluster/aws_setup.sh calls this; you may too):
#   NAME=VALUE      the line `export NAME="VALUE"` of cluster/cluster.env (an existing line for NAME, commented
#                   out or not, is replaced; otherwise one is appended)
#   IMAGE_ID=ami-…  the ImageId of every node type in cluster/gpu.yaml: one image, resolved once, for every node
#                   the cluster will ever boot (instead of `resolve:ssm:…/latest/…` at each launch)
#
#   bash cluster/settings.sh NAME=VALUE [NAME=VALUE ...]
#
# CLUSTER_DIR (default: the folder of this script) names another copy of the cluster folder.
set -euo pipefail
DIR="${CLUSTER_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
die() { echo "settings.sh: $*" >&2; exit 2; }
[ $# -ge 1 ] || die "usage: bash cluster/settings.sh NAME=VALUE [NAME=VALUE ...]"

for assignment in "$@"; do
    name="${assignment%%=*}"
    value="${assignment#*=}"
    [[ "$assignment" == *=* && "$name" =~ ^[A-Z_][A-Z0-9_]*$ ]] || die "expected NAME=VALUE, got '$assignment'"
    [[ "$value" =~ ^[A-Za-z0-9._:/=\ -]*$ ]] || die "$name: only letters, digits, spaces and ._:/=- are allowed, got '$value'"
    if [ "$name" = IMAGE_ID ]; then
        [[ "$value" =~ ^ami-[0-9a-f]{8,17}$ ]] || die "IMAGE_ID: not an AMI id: '$value'"
        sed -i -E "s|^([[:space:]]*ImageId:).*\$|\\1 $value|" "$DIR/gpu.yaml"
        echo "gpu.yaml: ImageId $value on every node type"
        continue
    fi
    line="export $name=\"$value\""
    if grep -Eq "^[#[:space:]]*export $name=" "$DIR/cluster.env"; then
        sed -i -E "s|^[#[:space:]]*export $name=.*\$|$line|" "$DIR/cluster.env"
    else
        printf '%s\n' "$line" >> "$DIR/cluster.env"
    fi
    echo "cluster.env: $line"
done
