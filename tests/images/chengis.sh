#!/usr/bin/env bash
# Builds chengis-test/chengis:latest, the image the multi-host tests run Chengis in, from a
# chengis binary (usage: chengis.sh BINARY), without a registry (`docker import`):
#   /usr/local/bin/chengis   the binary (the ENTRYPOINT), with every shared library ldd reports
#                            and the dynamic loader at their host paths
#   /bin/sh and busybox      so jobs run by the local process executor (`sh -c ...`, true, sleep)
#   /etc/ssl/certs           the host's CA certificates
#   /etc/passwd, /etc/group  root and nobody
#   /tmp (1777), /data (0777) writable; /data is the working directory, for chengis-data
# Idempotent and quick when up to date: the recipe label hashes this script, lib.sh, the binary
# and its libraries, and an image built from the same recipe is kept.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 BINARY" >&2; exit 2; }
binary=$(realpath "$1")
[ -x "$binary" ] || { echo "$0: $1 is not an executable file" >&2; exit 2; }
cd "$(dirname "$0")"
. ./lib.sh
image=chengis-test/chengis:latest
libs=$(shared_libs "$binary")
# shellcheck disable=SC2086 # one path a line, none with spaces
recipe=$(recipe chengis.sh lib.sh "$binary" $libs)
new_rootfs "$recipe" "$image"
ca_certificates "$root"
install -D -m 0755 "$binary" "$root/usr/local/bin/chengis"
copy_libs "$root" "$binary"
mkdir "$root/data"
chmod 0777 "$root/data"
printf '%s\n' 'hosts: files dns' > "$root/etc/nsswitch.conf"

import_rootfs "$root" "$image" "$recipe" \
  'ENV PATH=/usr/local/bin:/bin' 'ENV HOME=/root' 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  'WORKDIR /data' 'ENTRYPOINT ["/usr/local/bin/chengis"]'
echo "built $image ($recipe)"
