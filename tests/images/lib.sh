# shellcheck shell=bash
# Shared by the image scripts in this directory (source it, don't run it): root filesystems
# made from Debian's busybox-static package plus host binaries with the shared libraries `ldd`
# names, imported with `docker import` (no registry) and labelled with a recipe hash so an
# image already built from the same inputs is kept.

# recipe FILE...: a short hash of the files' contents (the scripts, binaries and libraries an
# image is made from).
recipe() {
  cat "$@" | sha256sum | cut -c1-16
}

# image_current IMAGE RECIPE: true when IMAGE exists and was built from RECIPE.
image_current() {
  [ "$(docker image inspect -f '{{index .Config.Labels "chengis.recipe"}}' "$1" 2>/dev/null)" = "$2" ]
}

# new_rootfs RECIPE IMAGE...: exits when every IMAGE was built from RECIPE; otherwise sets
# `root` to a new busybox root filesystem (removed when the script exits) to build them from.
new_rootfs() {
  local recipe=$1 image current=1
  shift
  for image in "$@"; do
    image_current "$image" "$recipe" || current=0
  done
  if [ "$current" = 1 ]; then
    echo "$* up to date ($recipe)"
    exit 0
  fi
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  busybox_rootfs "$root"
}

# busybox_rootfs ROOT: a minimal root filesystem in ROOT: busybox from Debian's busybox-static
# package with every applet linked in /bin (/sbin, /usr/bin and /usr/sbin point there), root
# and nobody in /etc/passwd and /etc/group, a world-writable /tmp and the mount points.
busybox_rootfs() {
  local root=$1 deb
  deb=$(mktemp -d)
  (cd "$deb" && { apt-get download busybox-static >/dev/null 2>&1 || { apt-get update -qq && apt-get download busybox-static >/dev/null; }; })
  dpkg-deb -x "$deb"/busybox-static_*.deb "$deb/pkg"
  mkdir -p "$root"/{bin,etc,tmp,root,proc,sys,dev,usr}
  cp "$deb/pkg/bin/busybox" "$root/bin/busybox"
  rm -rf "$deb"
  local applet
  for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  ln -s bin "$root/sbin"
  ln -s ../bin "$root/usr/bin"
  ln -s ../bin "$root/usr/sbin"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' > "$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' > "$root/etc/group"
  chmod 700 "$root/root"
  chmod 1777 "$root/tmp"
}

# add_user ROOT NAME UID HOME: a user and its group (gid = uid) owning HOME inside ROOT.
add_user() {
  local root=$1 name=$2 uid=$3 home=$4
  echo "$name:x:$uid:$uid:$name:$home:/bin/sh" >> "$root/etc/passwd"
  echo "$name:x:$uid:" >> "$root/etc/group"
  mkdir -p "$root$home"
  chown "$uid:$uid" "$root$home"
}

# shared_libs FILE...: the absolute paths of the shared libraries and the dynamic loader that
# `ldd` reports for the files, once each (nothing for static binaries); fails on a library ldd
# cannot find.
shared_libs() {
  local file out
  for file in "$@"; do
    out=$(ldd "$file" 2>&1) || { [[ $out == *"not a dynamic executable"* ]] && continue; echo "ldd $file: $out" >&2; return 1; }
    if [[ $out == *"not found"* ]]; then
      echo "ldd $file: missing libraries:" >&2
      grep 'not found' <<< "$out" >&2
      return 1
    fi
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<< "$out"
  done | sort -u
}

# copy_libs ROOT FILE...: the shared libraries and the loader ldd reports for the files, at
# their paths inside ROOT, so the files run there.
copy_libs() {
  local root=$1 libs
  shift
  libs=$(shared_libs "$@") || return 1
  # shellcheck disable=SC2086 # one path a line, none with spaces
  copy_files "$root" $libs
}

# copy_files ROOT FILE...: each file at the same path inside ROOT, symlinks resolved (a symlink
# already at that path, such as a busybox applet, is replaced, not followed).
copy_files() {
  local root=$1 file
  shift
  for file in "$@"; do
    mkdir -p "$root$(dirname "$file")"
    cp -L --remove-destination "$file" "$root$file"
  done
}

# ca_certificates ROOT: the host's CA certificates in /etc/ssl/certs (the bundle
# ca-certificates.crt and the hashed links OpenSSL looks up), and OpenSSL's default paths on
# Debian (/usr/lib/ssl/certs and cert.pem) pointing there.
ca_certificates() {
  local root=$1
  [ -f /etc/ssl/certs/ca-certificates.crt ] ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ca-certificates >/dev/null; }
  mkdir -p "$root/etc/ssl" "$root/usr/lib/ssl"
  cp -rL /etc/ssl/certs "$root/etc/ssl/certs"
  ln -s /etc/ssl/certs "$root/usr/lib/ssl/certs"
  ln -s /etc/ssl/certs/ca-certificates.crt "$root/usr/lib/ssl/cert.pem"
}

# import_rootfs ROOT IMAGE RECIPE [CHANGE...]: ROOT imported as IMAGE, labelled with RECIPE,
# each CHANGE a Dockerfile instruction `docker import` accepts (CMD, ENTRYPOINT, ENV, EXPOSE,
# LABEL, USER, VOLUME, WORKDIR; not STOPSIGNAL); the image it replaces is removed.
import_rootfs() {
  local root=$1 image=$2 recipe=$3 change args=() old
  shift 3
  old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  for change in "$@" "LABEL chengis.recipe=$recipe"; do
    args+=(-c "$change")
  done
  tar --numeric-owner -C "$root" -c . | docker import "${args[@]}" - "$image" >/dev/null
  # The image this one replaces, unless a container still uses it.
  [ -z "$old" ] || [ "$old" = "$(docker image inspect -f '{{.Id}}' "$image")" ] || docker rmi "$old" >/dev/null 2>&1 || true
}
