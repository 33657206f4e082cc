#!/usr/bin/env bash
# Builds chengis-test/postgres:latest, a PostgreSQL server for the multi-host tests, from the
# host's PostgreSQL (Debian's postgresql package, installed when missing) without a registry
# (`docker import`):
#   /usr/lib/postgresql/<v>   postgres, initdb, pg_ctl, pg_isready, psql and the server's
#                             loadable modules (all but the LLVM JIT), with their shared libraries
#   /usr/share/postgresql/<v> the share directory; /usr/share/zoneinfo for time zones
#   busybox                   /bin/sh for the entrypoint, and the usual tools
#   user postgres (uid 999)   runs the server; PGDATA=/var/lib/postgresql/data
# The entrypoint initialises PGDATA on first start (superuser postgres, password `chengis`,
# UTF8, C locale), listens on every address (port 5432) and trusts every client: TEST ONLY.
# Arguments go to postgres (`-c fsync=off`). `docker stop` is a fast shutdown (SIGINT).
# Idempotent: an image built from the same scripts and PostgreSQL package is kept.
set -euo pipefail
cd "$(dirname "$0")"
. ./lib.sh
image=chengis-test/postgres:latest
# The newest PostgreSQL under /usr/lib/postgresql/<v>, or nothing.
pg_version() { { find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null || true; } | cut -d/ -f5 | sort -n | tail -1; }
v=$(pg_version)
if [ -z "$v" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  v=$(pg_version)
fi
bin=/usr/lib/postgresql/$v/bin
recipe=$(recipe postgres.sh lib.sh <(echo "$v"; dpkg-query -W "postgresql-$v" "libpq5" 2>/dev/null || "$bin/postgres" -V))
new_rootfs "$recipe" "$image"
add_user "$root" postgres 999 /var/lib/postgresql
mkdir -p "$root/var/run/postgresql" "$root/usr/share"
chown 999:999 "$root/var/run/postgresql"
chmod 2775 "$root/var/run/postgresql"

modules=()
for module in "/usr/lib/postgresql/$v/lib"/*.so; do
  [[ $module == */llvmjit* ]] || modules+=("$module")
done
copy_files "$root" "$bin"/{postgres,initdb,pg_ctl,pg_isready,psql} "${modules[@]}"
copy_libs "$root" "$bin"/{postgres,initdb,pg_ctl,pg_isready,psql} "${modules[@]}"
mkdir -p "$root/usr/share/postgresql"
cp -rL "/usr/share/postgresql/$v" "$root/usr/share/postgresql/$v"
rm -rf "$root/usr/share/postgresql/$v/man"
cp -a /usr/share/zoneinfo "$root/usr/share/zoneinfo"

mkdir -p "$root/usr/local/bin"
cat > "$root/usr/local/bin/postgres-entrypoint" <<ENTRYPOINT
#!/bin/sh
# Starts PostgreSQL $v in the foreground; on first start initialises \$PGDATA for tests: every
# client of any host is trusted (the superuser postgres also has the password chengis).
set -eu
if [ ! -s "\$PGDATA/PG_VERSION" ]; then
  echo chengis > /tmp/pwfile
  $bin/initdb -D "\$PGDATA" -U postgres --pwfile=/tmp/pwfile --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
  rm -f /tmp/pwfile
  cat >> "\$PGDATA/postgresql.conf" <<'CONF'
listen_addresses = '*'
jit = off
CONF
  cat > "\$PGDATA/pg_hba.conf" <<'HBA'
local all all trust
host all all 0.0.0.0/0 trust
host all all ::/0 trust
local replication all trust
host replication all 0.0.0.0/0 trust
host replication all ::/0 trust
HBA
fi
# docker stop sends SIGTERM, which PostgreSQL takes as a smart shutdown that waits for every
# client to leave; SIGINT is the fast shutdown (clients disconnected, then a clean stop).
$bin/postgres -D "\$PGDATA" "\$@" &
pid=\$!
trap 'kill -INT \$pid' TERM INT
set +e
wait \$pid
status=\$?
# A trapped signal ends the first wait early: wait for the server to finish shutting down.
if [ \$status -gt 128 ] && kill -0 \$pid 2>/dev/null; then
  wait \$pid
  status=\$?
fi
exit \$status
ENTRYPOINT
chmod 0755 "$root/usr/local/bin/postgres-entrypoint"

import_rootfs "$root" "$image" "$recipe" \
  "ENV PATH=$bin:/bin" 'ENV PGDATA=/var/lib/postgresql/data' 'ENV TZ=UTC' 'USER postgres' 'EXPOSE 5432' \
  'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]'
echo "built $image ($recipe)"
