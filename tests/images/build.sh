#!/usr/bin/env bash
# Builds the container images the tests need, without a registry: a root filesystem made from
# Debian's busybox-static package, turned into images with `docker import`.
#   chengis-test/busybox  sh and the busybox tools, root and a non-root user `builder` (uid 1000)
#   chengis-test/httpd    the same, serving /www on port 80 (a service for `services:` tests)
# Idempotent: images already built from the same recipe are kept.
set -euo pipefail
cd "$(dirname "$0")"
recipe=$(sha256sum build.sh | cut -c1-16)
if [ "$(docker image inspect -f '{{index .Config.Labels "chengis.recipe"}}' chengis-test/httpd:latest 2>/dev/null)" = "$recipe" ] &&
   [ "$(docker image inspect -f '{{index .Config.Labels "chengis.recipe"}}' chengis-test/busybox:latest 2>/dev/null)" = "$recipe" ]; then
  echo "test images are up to date ($recipe)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && { apt-get download busybox-static >/dev/null 2>&1 || { apt-get update -qq && apt-get download busybox-static >/dev/null; }; })
dpkg-deb -x "$work"/busybox-static_*.deb "$work/pkg"

root="$work/rootfs"
mkdir -p "$root"/{bin,etc,tmp,workspace,www,home/builder,proc,sys,dev}
cp "$work/pkg/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
ln -s bin "$root/sbin"
mkdir -p "$root/usr"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
builder:x:1000:1000:builder:/home/builder:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
builder:x:1000:
nogroup:x:65534:
GROUP
echo "hello from the service" > "$root/www/index.html"
chmod 1777 "$root/tmp"
chown 1000:1000 "$root/home/builder"

tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' -c "LABEL chengis.recipe=$recipe" \
  - chengis-test/busybox:latest >/dev/null
tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/bin' -c 'EXPOSE 80' -c 'CMD ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]' \
  -c "LABEL chengis.recipe=$recipe" \
  - chengis-test/httpd:latest >/dev/null
echo "built chengis-test/busybox and chengis-test/httpd ($recipe)"
