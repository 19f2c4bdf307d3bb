#!/usr/bin/env bash
# Offline Kubernetes checks of the operator's artifacts (no cluster needed):
#   1. the generated CRDs (crds/) and the objects the builders generate
#      (operator/tests/golden/, kept equal to the builders by `cargo test -p loka-operator`:
#      Deployments, and in persistent.yaml the StatefulSet with its claim template and
#      headless Service) validate against the Kubernetes 1.33 OpenAPI schemas, strictly (and
#      1.26 for the CRDs);
#   2. every kustomize overlay in manifests/overlays/ and example in manifests/examples/
#      builds and validates;
#   3. the Helm chart lints (strict) and renders for several value sets, each validating;
#      values.schema.json rejects bad values;
#   4. no rendered Role/ClusterRole grants access to Secrets;
#   5. the chart README's values table matches values.yaml.
# Installs its Python tools (kubernetes-validate, helm-python-sdk) when missing.
# Exits non-zero on any failure; ends with an "N passed, N failed" line.
set -uo pipefail

cd "$(dirname "$0")/.."
K8S_VERSION=1.33.0
OLDEST_K8S=1.26.0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

check() { # name, command...
  local name=$1
  shift
  if "$@" >"$work/out" 2>&1; then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name"
    sed 's/^/     /' "$work/out"
  fi
}

ensure_python_tool() { # module, pip package
  if ! python3 -c "import $1" 2>/dev/null; then
    echo "installing $2"
    python3 -m pip install --quiet --disable-pip-version-check "$2" || {
      echo "FAIL could not install $2"
      exit 1
    }
  fi
}
ensure_python_tool kubernetes_validate kubernetes-validate
ensure_python_tool helm_python helm-python-sdk
command -v kubectl >/dev/null || { echo "FAIL kubectl (for kustomize) is missing"; exit 1; }

validate() { # files... (fails on errors; unknown kinds such as ServiceMonitor only warn)
  kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$@"
}

# 1. CRDs and builder output.
check "CRDs validate (Kubernetes $K8S_VERSION, strict)" validate crds/stratumpools.loka.io.yaml crds/stratumproxies.loka.io.yaml
check "CRDs validate (Kubernetes $OLDEST_K8S, strict)" \
  kubernetes-validate --strict --quiet -k "$OLDEST_K8S" crds/stratumpools.loka.io.yaml crds/stratumproxies.loka.io.yaml
for f in operator/tests/golden/*.yaml; do
  check "generated objects $f validate" validate "$f"
done

# 2. kustomize.
for overlay in manifests/overlays/*/ manifests/examples/*/; do
  name=$(basename "$overlay")
  out="$work/kustomize-$name.yaml"
  check "kustomize $name builds" sh -c "kubectl kustomize '$overlay' > '$out'"
  check "kustomize $name validates" validate "$out"
done

# 3. Helm chart: lint, render, validate, schema.
cat >"$work/helm.py" <<'EOF'
import json, sys
import helm_python as helm

chart_dir, out_dir = sys.argv[1], sys.argv[2]
value_sets = {
    "defaults": None,
    "namespaced": {"watchNamespace": "mining", "crds": {"create": False},
                   "leaderElection": {"enabled": False}, "replicaCount": 2},
    "custom": {"proxyImage": "registry.example/loka-proxy:1.2.3", "serviceMonitor": "never",
               "image": {"repository": "registry.example/loka-operator", "tag": "dev"},
               "nodeSelector": {"kubernetes.io/os": "linux"}},
    "monitoring": {"monitoring": {"prometheusRule": {"create": "always", "labels": {"release": "prometheus"}},
                                  "operatorServiceMonitor": {"create": "always"},
                                  "grafanaDashboard": {"namespace": "grafana"}}},
    "no-monitoring": {"monitoring": {"prometheusRule": {"create": "never"},
                                     "operatorServiceMonitor": {"create": "never"},
                                     "grafanaDashboard": {"create": False}}},
}
import yaml
alerts = yaml.safe_load(open(f"{chart_dir}/alerts/loka-stratum.yaml"))
dashboard = json.load(open(f"{chart_dir}/dashboards/loka-stratum.json"))
ok = True
for name, values in value_sets.items():
    report = helm.lint(chart_dir, values, strict=True, kube_version="v" + sys.argv[3])
    bad = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
    if bad:
        print(f"lint {name}: {bad}")
        ok = False
    chart = helm.Chart.load(chart_dir)
    out = chart.render(values, name="loka", namespace="loka-system", is_install=True)
    notes = {p: t for p, t in out.items() if p.endswith("NOTES.txt")}
    if not any("kubectl" in t for t in notes.values()):
        print(f"render {name}: NOTES.txt missing or empty")
        ok = False
    out = {p: t for p, t in out.items() if p not in notes}
    with open(f"{out_dir}/helm-{name}.yaml", "w") as f:
        for path, text in sorted(out.items()):
            if text.strip():
                f.write(f"---\n# Source: {path}\n{text}\n")
    docs = [d for t in out.values() for d in yaml.safe_load_all(t) if d]
    kinds = sorted(d["kind"] for d in docs if d["kind"] in ("PrometheusRule", "ServiceMonitor")
                   or d["metadata"]["name"].endswith("-dashboard"))
    want_kinds = {"monitoring": ["ConfigMap", "PrometheusRule", "ServiceMonitor"],
                  "no-monitoring": []}.get(name, ["ConfigMap"])
    if kinds != want_kinds:
        print(f"render {name}: monitoring objects {kinds}, expected {want_kinds}")
        ok = False
    for d in docs:
        if d["kind"] == "PrometheusRule" and d["spec"] != alerts:
            print(f"render {name}: the PrometheusRule differs from alerts/loka-stratum.yaml")
            ok = False
        if d["metadata"]["name"].endswith("-dashboard") and \
                json.loads(d["data"]["loka-stratum.json"]) != dashboard:
            print(f"render {name}: the dashboard ConfigMap differs from dashboards/loka-stratum.json")
            ok = False
    crds = [p for p, t in out.items() if "/crds/" in p and "CustomResourceDefinition" in t]
    want = name != "namespaced"
    if bool(crds) != want:
        print(f"render {name}: CRDs rendered={bool(crds)}, expected {want}")
        ok = False
for bad in [{"replicaCount": "two"}, {"serviceMonitor": "sometimes"}, {"unknownKey": 1},
            {"monitoring": {"prometheusRule": {"create": "sometimes"}}},
            {"monitoring": {"operatorServiceMonitor": {"interval": "often"}}}]:
    try:
        helm.Chart.load(chart_dir).validate_schema(bad)
        print(f"values.schema.json accepted {bad}")
        ok = False
    except helm.HelmValuesError:
        pass
sys.exit(0 if ok else 1)
EOF
check "helm lint (strict) and render" python3 "$work/helm.py" charts/loka "$work" "$K8S_VERSION"
for f in "$work"/helm-*.yaml; do
  [ -e "$f" ] && check "helm $(basename "$f" .yaml) validates" validate "$f"
done

check "chart README values table matches values.yaml" python3 tests/chart_readme.py --check

# 4. Least privilege: no Secret access in any rendered RBAC.
cat >"$work/rbac.py" <<'EOF'
import sys, yaml
bad = []
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("kind") not in ("Role", "ClusterRole"):
            continue
        for rule in doc.get("rules", []):
            res = rule.get("resources", [])
            if "secrets" in res or "*" in res or "*" in rule.get("verbs", []):
                bad.append((path, doc["metadata"]["name"], rule))
for b in bad:
    print("too broad:", b)
sys.exit(1 if bad else 0)
EOF
check "RBAC grants no Secret access" python3 "$work/rbac.py" "$work"/kustomize-*.yaml "$work"/helm-*.yaml

echo "operator-checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
