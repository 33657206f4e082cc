#!/usr/bin/env bash
# The builtin plugin catalogue end to end: a Chengis server with a fake GitHub on 127.0.0.1
# runs a pipeline that uses a notifier (console), an SCM status reporter (github-status, against
# the fake forge), two policies (image-policy, branch-protection) and three step executors
# (junit, script, http). Exits 0 when the build passed, the forge received the statuses and the
# build's test results are stored.
#
#   examples/catalogue/run.sh            # builds chengis with cargo first
#   CHENGIS=path/to/chengis examples/catalogue/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if [ -z "${CHENGIS:-}" ]; then
  cargo build -q --manifest-path "$root/Cargo.toml" -p chengis
  CHENGIS="${CARGO_TARGET_DIR:-$root/target}/debug/chengis"
fi
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

say "starting the fake GitHub"
token="ghp_example_$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
python3 "$here/fake_forge.py" "$token" > "$work/forge.port" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/forge.port" ] && break; sleep 0.1; done
forge="http://127.0.0.1:$(cat "$work/forge.port")"

say "creating the repository acme/web"
repo="$work/acme/web"
mkdir -p "$repo"
sed "s|@FORGE@|$forge|g" "$here/pipeline.yml" > "$repo/.chengis.yml"
git -C "$repo" init -q -b main
git -C "$repo" -c user.name=Example -c user.email=example@chengis.invalid add .chengis.yml
git -C "$repo" -c user.name=Example -c user.email=example@chengis.invalid commit -q -m "Add the pipeline"
sha="$(git -C "$repo" rev-parse HEAD)"

say "starting chengis serve"
data="$work/data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export CHENGIS_SERVER="http://127.0.0.1:$port"
# An admin API token for this script (CHENGIS_ADMIN_TOKEN becomes one at first start); the CLI
# reads CHENGIS_TOKEN, curl sends it as a Bearer token.
CHENGIS_TOKEN="chgu_$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
export CHENGIS_TOKEN
auth=(-H "Authorization: Bearer $CHENGIS_TOKEN")
CHENGIS_ADMIN_TOKEN="$CHENGIS_TOKEN" "$CHENGIS" serve --listen "127.0.0.1:$port" --data-dir "$data" > "$work/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do curl -fs "$CHENGIS_SERVER/health" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$CHENGIS_SERVER/health" >/dev/null || { echo "chengis serve did not start:"; cat "$work/serve.log"; exit 1; }
# The first start compiles and pins the builtin plugins in the background (seconds in a debug
# build); `/ready` says when they are pinned, and so can be configured by name.
for _ in $(seq 3000); do curl -fs "$CHENGIS_SERVER/ready" | grep -q '"compiling"' || break; sleep 0.1; done
plugin() { "$CHENGIS" plugin --data-dir "$data" "$@"; }

say "configuring the plugins (the builtins are already allowed by digest)"
plugin list
plugin config console --set chengis.notify=finished --set prefix="[catalogue]"
plugin config github-status --set api-url="$forge/api/v3" --set repository=acme/web
plugin allow github-status --grant "http:$forge" --grant secret:GITHUB_TOKEN
plugin allow http --grant "http:$forge"
plugin config image-policy --set rules="allow docker.io/library/*"
plugin config branch-protection --set rules="only deploy* on main, tag:v*"

say "creating the job and its secret"
"$CHENGIS" job create web --repo "file://$repo" --pipeline .chengis.yml
printf '%s' "$token" | "$CHENGIS" secret set GITHUB_TOKEN --job web

say "building"
"$CHENGIS" build trigger web --wait

say "checking what the forge received"
for _ in $(seq 50); do
  curl -fs "$forge/statuses" > "$work/statuses.json"
  python3 - "$work/statuses.json" "$sha" <<'PY' && break
import json, sys
got = json.load(open(sys.argv[1]))
sha = sys.argv[2]
final = {}
for s in got:
    assert s["repo"] == "acme/web" and s["sha"] == sha, s
    final[s["context"]] = s["state"]
want = {"chengis/build": "success", "chengis/test": "success", "chengis/deploy": "success"}
sys.exit(0 if final == want else 1)
PY
  sleep 0.2
done
python3 - "$work/statuses.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1])):
    print(f'  {s["context"]:<16} {s["state"]:<8} {s["description"]}')
PY

say "checking the stored test results"
build=$(curl -fs "${auth[@]}" "$CHENGIS_SERVER/api/v1/builds?job=web" | python3 -c 'import json,sys; print(json.load(sys.stdin)["builds"][0]["id"])')
curl -fs "${auth[@]}" "$CHENGIS_SERVER/api/v1/builds/$build/tests" > "$work/tests.json"
python3 - "$work/tests.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
print(f"  {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped")
assert (t["passed"], t["failed"], t["skipped"]) == (2, 0, 1), t
PY
grep -q "\[catalogue\]" "$work/serve.log" || { echo "the console notifier wrote nothing"; exit 1; }
say "the catalogue example passed"
