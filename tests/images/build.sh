#!/usr/bin/env bash
# Builds the container images the tests need, without a registry: a root filesystem made from
# Debian's busybox-static package, turned into images with `docker import`.
#   chengis-test/busybox  sh and the busybox tools, root and a non-root user `builder` (uid 1000)
#   chengis-test/httpd    the same, serving /www on port 80 (a service for `services:` tests)
# Idempotent: images already built from the same recipe are kept.
set -euo pipefail
cd "$(dirname "$0")"
. ./lib.sh
recipe=$(recipe build.sh lib.sh)
new_rootfs "$recipe" chengis-test/busybox:latest chengis-test/httpd:latest
add_user "$root" builder 1000 /home/builder
mkdir -p "$root"/{workspace,www}
echo "hello from the service" > "$root/www/index.html"

import_rootfs "$root" chengis-test/busybox:latest "$recipe" 'ENV PATH=/bin' 'CMD ["/bin/sh"]'
import_rootfs "$root" chengis-test/httpd:latest "$recipe" \
  'ENV PATH=/bin' 'EXPOSE 80' 'CMD ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]'
echo "built chengis-test/busybox and chengis-test/httpd ($recipe)"
