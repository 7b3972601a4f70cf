#!/usr/bin/env bash
# Installs what building, testing and running connwarden needs on a Debian 12 host,
# and mounts bpffs and tracefs when missing. Idempotent: it installs only what is
# absent, so `make test` and `make run` may call it every time.
set -euo pipefail

need=()
command -v clang >/dev/null       || need+=(clang)
command -v llvm-strip >/dev/null  || need+=(llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
command -v bpftool >/dev/null     || [ -x /usr/sbin/bpftool ] || need+=(bpftool)
command -v ip >/dev/null          || need+=(iproute2)
command -v promtool >/dev/null    || need+=(prometheus)
command -v ping >/dev/null        || need+=(iputils-ping)
command -v nsenter >/dev/null     || need+=(util-linux)
# deploy/ checks: the unit (systemd-analyze; setpriv and unshare come with
# util-linux), the system calls the agent makes (strace).
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v strace >/dev/null      || need+=(strace)

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "setup-host: missing ${need[*]}; run as root to install them" >&2
		exit 1
	fi
	echo "setup-host: installing ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "$(id -u)" -eq 0 ]; then
	mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
fi
