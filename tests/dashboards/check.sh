#!/usr/bin/env bash
# Checks what operators import: the alert rules and the scrape config pass promtool (and the rules'
# unit tests in tests/dashboards/alerts_test.yml pass), the Grafana dashboard is importable as-is
# (valid JSON, the datasource a variable), and every quotegw_* metric that dashboards/*.json and
# dashboards/alerts.yml name exists in a real /metrics scrape.
#
#   tests/dashboards/check.sh SCRAPE_FILE     (SCRAPE_FILE: the body of GET /metrics from a gateway)
#
# Installs Debian's `prometheus` (which ships promtool) when promtool is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

die() {
  echo "dashboards check FAILED: $*" >&2
  exit 1
}

scrape="${1:-}"
[ -n "$scrape" ] || die "usage: $0 SCRAPE_FILE (a file holding the body of GET /metrics from quotegw)"
[ -s "$scrape" ] || die "scrape file '$scrape' is missing or empty"

if ! command -v promtool >/dev/null; then
  echo "dashboards: installing Debian prometheus for promtool" >&2
  tests/support/apt-install.sh /usr/bin/promtool --no-install-recommends prometheus \
    || die "promtool could not be installed (see above)"
  command -v promtool >/dev/null || die "the prometheus package installed no promtool"
fi

promtool check rules dashboards/alerts.yml >/dev/null || die "promtool check rules dashboards/alerts.yml (run it to see why)"
echo "ok - promtool check rules dashboards/alerts.yml"
promtool check config dashboards/prometheus.yml >/dev/null || die "promtool check config dashboards/prometheus.yml (run it to see why)"
echo "ok - promtool check config dashboards/prometheus.yml"
promtool test rules tests/dashboards/alerts_test.yml >/dev/null || die "promtool test rules tests/dashboards/alerts_test.yml (run it to see why)"
echo "ok - promtool test rules tests/dashboards/alerts_test.yml"

# The dashboard: valid JSON that Grafana imports without editing. Every panel and variable takes its
# datasource from the ${datasource} variable, never from a uid that exists only on one Grafana.
python3 - dashboards/*.json <<'PY' || die "a dashboard is not importable as-is (see above)"
import json, sys
bad = []
for path in sys.argv[1:]:
    try:
        d = json.load(open(path))
    except ValueError as e:
        bad.append(f"{path}: not valid JSON: {e}")
        continue
    variables = d.get("templating", {}).get("list", [])
    ds_vars = [v["name"] for v in variables if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    inputs = [i["name"] for i in d.get("__inputs", []) if i.get("type") == "datasource"]
    if not ds_vars and not inputs:
        bad.append(f"{path}: no datasource variable (templating type 'datasource') and no __inputs")
    allowed = {f"${{{n}}}" for n in ds_vars} | {f"${n}" for n in ds_vars} | {f"${{{n}}}" for n in inputs}
    ids = set()
    def walk(node, where):
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and ds.get("type") == "prometheus" and ds.get("uid") not in allowed:
                bad.append(f"{path}: {where} uses datasource uid {ds.get('uid')!r}, not the variable")
            if isinstance(ds, str) and ds not in allowed:
                bad.append(f"{path}: {where} uses datasource {ds!r}, not the variable")
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")
    walk(d.get("panels", []), "panels")
    walk(variables, "templating")
    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))
    for p in panels(d.get("panels", [])):
        if p.get("id") in ids:
            bad.append(f"{path}: panel id {p.get('id')} is used twice")
        ids.add(p.get("id"))
        if p.get("type") != "row" and not p.get("targets"):
            bad.append(f"{path}: panel {p.get('title')!r} has no query")
    if not d.get("uid") or not d.get("title"):
        bad.append(f"{path}: no uid or title")
for b in bad:
    print(b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
echo "ok - dashboards/*.json import as-is (datasource from a variable)"

# Every metric name the dashboards and rules use must be one the gateway exports. A histogram's
# _bucket/_sum/_count series count as its family.
referenced="$(grep -ohE 'quotegw_[A-Za-z0-9_:]+' dashboards/*.json dashboards/alerts.yml | sort -u)"
[ -n "$referenced" ] || die "no quotegw_* metric found in dashboards/*.json or dashboards/alerts.yml"
exported="$(
  {
    grep -vE '^[[:space:]]*(#|$)' "$scrape" | sed -E 's/[{[:space:]].*//'
    sed -nE 's/^# TYPE ([^ ]+) (histogram|summary).*/\1_bucket\n\1_sum\n\1_count\n\1/p; s/^# TYPE ([^ ]+) .*/\1/p' "$scrape"
  } | sort -u
)"
grep -q '^quotegw_' <<<"$exported" || die "'$scrape' holds no quotegw_* metric: is it a quotegw /metrics scrape?"
missing=""
count=0
for name in $referenced; do
  count=$((count + 1))
  grep -qxF "$name" <<<"$exported" || missing="$missing $name"
done
[ -z "$missing" ] || die "metrics used by dashboards/ but not in the gateway's /metrics ($scrape):$missing"
echo "ok - all $count quotegw_* metrics used by dashboards/*.json and dashboards/alerts.yml exist in $scrape"
