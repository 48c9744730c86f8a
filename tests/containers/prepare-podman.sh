#!/usr/bin/env bash
# Prepare this machine to run docker-compose.yml with podman, offline (see shared notes on
# containers): podman's configuration, a local stand-in for python:3.11-slim (no registry here),
# and a virtualenv with the project's dependencies made BY a container (so interpreter paths
# match), mounted read-only into the services by tests/containers/compose.podman.yml.
# Idempotent; everything is cached under $FEDGMA_PODMAN_CACHE (default /var/tmp/fedgma-podman).
#   tests/containers/prepare-podman.sh        prints the environment to export
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${FEDGMA_PODMAN_CACHE:-/var/tmp/fedgma-podman}
mkdir -p "$cache"
export CONTAINERS_CONF=$cache/containers.conf
cat > "$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF

missing=()
for tool in podman podman-compose debootstrap runc catatonit; do
    command -v "$tool" >/dev/null || [ -x "/usr/libexec/podman/$tool" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman podman-compose runc debootstrap catatonit >/dev/null
fi

base=docker.io/library/python:3.11-slim
if ! podman image exists "$base"; then
    rootfs=$cache/rootfs
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
        >"$cache/debootstrap.log" 2>&1
    tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
    rm -rf "$rootfs"
fi

# The dependencies' virtualenv, rebuilt when the project's dependencies change.
venv=$cache/venv
stamp=$venv/.dependencies
wanted=$(python3 -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; print(p["dependencies"], p["optional-dependencies"]["app"], p["optional-dependencies"]["deploy"])' \
         "$repo/pyproject.toml")
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    rm -rf "$venv"
    mkdir -p "$venv"
    mounts=(-v "$venv:/venv" -v "$repo:/src:ro" -v /etc/ssl/certs:/etc/ssl/certs:ro)
    for path in /etc/xdg/pip /etc/pip.conf /opt/wheels /opt/pypi /opt/pypi-more; do
        [ -e "$path" ] && mounts+=(-v "$path:$path:ro")
    done
    podman run --rm --network host "${mounts[@]}" -e PIP_DISABLE_PIP_VERSION_CHECK=1 "$base" \
        bash -c 'python3 -m venv /venv && mkdir /tmp/src && cp -r /src/pyproject.toml /src/README.md /src/LICENSE /src/fedgma /tmp/src \
                 && /venv/bin/pip install -q "/tmp/src[deploy]"' >"$cache/venv.log" 2>&1
    printf '%s' "$wanted" > "$stamp"
fi
echo "export CONTAINERS_CONF=$CONTAINERS_CONF FEDGMA_PODMAN_VENV=$venv"
