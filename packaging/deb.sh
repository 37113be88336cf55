#!/bin/sh
# Builds the Debian package of tcpopsd from a build folder: packaging/deb.sh BUILDDIR OUTDIR [VERSION]
# (`make deb` runs it on the release build). The files are what `make install-files` lays out, with
# PREFIX=/usr and the units in /lib/systemd/system; /etc/tcpopsd/tcpopsd.toml is a conffile; the
# maintainer scripts (packaging/debian/) do what dh_installsystemd's would: enable the service on
# install, restart it on upgrade (a restart carries the relays through systemd's fd store), stop
# it on removal, forget it on purge. Dependencies come from dpkg-shlibdeps; lintian checks the
# each with its reason).
set -eu
build=$(cd "$1" && pwd)
out=$2
here=$(cd "$(dirname "$0")/.." && pwd)
version=${3:-$("$build/tcpopsd" --version | awk '{print $2}')}
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root" "$out"

make -s -C "$here" install-files DESTDIR="$root" PREFIX=/usr BUILDDIR="$build" UNITDIR=/lib/systemd/system \
    ZSHDIR=/usr/share/zsh/vendor-completions >/dev/null
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/tcpopsd" "$root/usr/bin/tcpopsctl"
gzip -9n "$root"/usr/share/man/man*/*
# bash sources a completion: its generated hashbang line means nothing there (lintian says so).
sed -i '1{/^#!/d}' "$root/usr/share/bash-completion/completions/tcpopsctl"
doc=$root/usr/share/doc/tcpopsd
cp "$here/packaging/debian/copyright" "$doc/copyright"
sed -e "s/@VERSION@/$version/" -e "s/@DATE@/$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct 2>/dev/null || date +%s)}")/" \
    "$here/packaging/debian/changelog" | gzip -9n > "$doc/changelog.gz"
find "$root" -type d -exec chmod 0755 {} +

# What the binaries link: dpkg-shlibdeps wants a debian/control beside it.
mkdir -p "$work/src/debian"
printf 'Source: tcpopsd\n\nPackage: tcpopsd\nArchitecture: any\n' > "$work/src/debian/control"
depends=$(cd "$work/src" && dpkg-shlibdeps -O -e"$root/usr/bin/tcpopsd" -e"$root/usr/bin/tcpopsctl" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')

mkdir -p "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" -e "s/@SIZE@/$size/" \
    "$here/packaging/debian/control" > "$root/DEBIAN/control"
echo /etc/tcpopsd/tcpopsd.toml > "$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "$here/packaging/debian/$s" "$root/DEBIAN/$s"; done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort | xargs md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/control" "$root/DEBIAN/conffiles"

deb=$out/tcpopsd_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
if command -v lintian >/dev/null; then
    findings=$(lintian --fail-on warning "$deb" 2>&1) || { echo "$findings" >&2; exit 1; }
    echo "$findings" | grep -v "^running with root privileges" >&2 || true
fi
echo "$deb"
