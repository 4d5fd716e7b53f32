#!/usr/bin/env bash
# Checks the deployment files in deploy/ without a cluster:
#  - the Kubernetes manifests against the Kubernetes 1.37 schemas
#    (kubernetes-validate --strict, from PyPI) and yamllint;
#  - the config inside the ConfigMap with `driftd check`, its ${VAR}s filled
#    from secret.example.yaml;
#  - the systemd unit with `systemd-analyze verify`, pointed at the built binary.
# Usage: bash scripts/check-deploy.sh   (builds driftd if needed; not part of `cargo test`)
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== tools (a virtualenv in $work)"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q kubernetes-validate==1.37.0 yamllint==1.38.0 PyYAML==6.0.4

echo "== kubernetes manifests"
"$work/venv/bin/kubernetes-validate" --strict deploy/kubernetes/*.yaml
"$work/venv/bin/yamllint" -d '{extends: relaxed, rules: {line-length: {max: 100}}}' deploy/kubernetes/*.yaml

echo "== the ConfigMap's config, checked by driftd"
cargo build -q --bin driftd
bin="$(cargo metadata -q --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/driftd"
"$work/venv/bin/python" - "$work" <<'PY'
import sys, yaml
work = sys.argv[1]
config = yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))
open(f"{work}/driftd.toml", "w").write(config["data"]["driftd.toml"])
secret = yaml.safe_load(open("deploy/kubernetes/secret.example.yaml"))
with open(f"{work}/env", "w") as f:
    for k, v in secret["stringData"].items():
        f.write(f"{k}={v}\n")
PY
env $(cat "$work/env") "$bin" check --config "$work/driftd.toml"

echo "== systemd unit"
sed "s#/usr/local/bin/driftd#$bin#g" deploy/systemd/driftd.service > "$work/driftd.service"
systemd-analyze verify "$work/driftd.service"

echo "deploy files: ok"
