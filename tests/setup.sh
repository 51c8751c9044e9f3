#!/usr/bin/env bash
# Installs what mirrorctl's tests and benchmarks need on a Debian machine (idempotent).
set -euo pipefail
need=()
command -v losetup >/dev/null || need+=(mount)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v strace >/dev/null || need+=(strace)
command -v cmp >/dev/null || need+=(diffutils)
command -v rsync >/dev/null || need+=(rsync)
command -v python3 >/dev/null || need+=(python3)
command -v qemu-nbd >/dev/null || need+=(qemu-utils)
command -v qemu-io >/dev/null || need+=(qemu-utils)
command -v nbdkit >/dev/null || need+=(nbdkit)
command -v b3sum >/dev/null || need+=(b3sum)
# Clients of `serve` (tests/cli/serve.rs): fio with its nbd engine, nbdinfo/nbdcopy/nbdfuse.
command -v fio >/dev/null || need+=(fio)
command -v nbdinfo >/dev/null || need+=(libnbd-bin)
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v nbdcopy >/dev/null || need+=(libnbd-bin)
command -v nbdfuse >/dev/null || need+=(libnbd-bin)
command -v pgrep >/dev/null || need+=(procps)
# Real formatted images for the attach/create refusals (tests/safety.rs).
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v chattr >/dev/null || need+=(e2fsprogs)
command -v e2fsck >/dev/null || need+=(e2fsprogs)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
command -v cryptsetup >/dev/null || need+=(cryptsetup-bin)
command -v sgdisk >/dev/null || need+=(gdisk)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v blkid >/dev/null || need+=(util-linux)
command -v mkswap >/dev/null || need+=(util-linux)
command -v mkfifo >/dev/null || need+=(coreutils)
# The completions are tested in the real shells (tests/cli/completion.rs).
command -v zsh >/dev/null || need+=(zsh)
command -v fish >/dev/null || need+=(fish)
# A terminal for the progress-bar tests (tests/cli/output.rs).
command -v script >/dev/null || need+=(bsdutils)
# The man pages must render without groff warnings (tests/cli/generated_docs.rs).
command -v groff >/dev/null || need+=(groff-base)
# Certificates for the TLS tests (tests/cli/tls.rs).
command -v openssl >/dev/null || need+=(openssl)
# `status --format prometheus` is checked with promtool (tests/cli/events.rs).
command -v promtool >/dev/null || need+=(prometheus)
# The shipped units are checked with systemd-analyze verify (tests/cli/systemd.rs), their
# Documentation= pages with man, the installed tree in a mount namespace (unshare).
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v man >/dev/null || need+=(man-db)
command -v unshare >/dev/null || need+=(util-linux)
# The install block splits the debug information off the binary (objcopy, readelf).
command -v objcopy >/dev/null || need+=(binutils)
command -v readelf >/dev/null || need+=(binutils)
# The real Pacemaker cluster (tests/cli/ha_cluster.rs): corosync and pacemakerd in the
# foreground, the cluster tools, Pacemaker's own agents (Stateful, remote), ocf-tester and
# xmllint (meta-data validation), cluster-glue's null STONITH plugin, ip/nsenter for the
# second node's namespaces.
command -v corosync >/dev/null || need+=(corosync)
command -v pacemakerd >/dev/null || need+=(pacemaker)
command -v crm_mon >/dev/null || need+=(pacemaker-cli-utils)
command -v cibadmin >/dev/null || need+=(pacemaker-cli-utils)
command -v crm_resource >/dev/null || need+=(pacemaker-cli-utils)
command -v crm_simulate >/dev/null || need+=(pacemaker-cli-utils)
command -v crm_attribute >/dev/null || need+=(pacemaker-cli-utils)
command -v crm_node >/dev/null || need+=(pacemaker)
command -v stonith_admin >/dev/null || need+=(pacemaker-cli-utils)
command -v ocf-tester >/dev/null || need+=(resource-agents)
command -v xmllint >/dev/null || need+=(libxml2-utils)
[ -e /usr/lib/stonith/plugins/stonith2/null.so ] || need+=(cluster-glue)
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "tests/setup.sh: missing ${need[*]}; run as root or install them (apt-get install ${need[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# pacemaker-remote conflicts with pacemaker: its daemon is unpacked beside it, into
# /opt/pacemaker-remote (the daemon is /opt/pacemaker-remote/usr/sbin/pacemaker-remoted; the
# libraries it links are pacemaker's own, installed above).
PCMK_REMOTE_DIR=/opt/pacemaker-remote
if [ ! -x "$PCMK_REMOTE_DIR/usr/sbin/pacemaker-remoted" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "tests/setup.sh: missing $PCMK_REMOTE_DIR/usr/sbin/pacemaker-remoted; run as root" >&2
    exit 1
  fi
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq pacemaker-remote 2>/dev/null)
  mkdir -p "$PCMK_REMOTE_DIR"
  dpkg-deb -x "$tmp"/pacemaker-remote_*.deb "$PCMK_REMOTE_DIR"
  rm -rf "$tmp"
fi
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
fi
