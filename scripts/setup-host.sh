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
# The PAM tests: gcc builds a small libpam caller; OpenSSH is the real server
# and client of the end-to-end brute-force tests (sshd runs only inside the
# tests' network namespaces).
command -v gcc >/dev/null         || need+=(gcc libc6-dev)
[ -x /usr/sbin/sshd ]             || need+=(openssh-server)
command -v ssh >/dev/null         || need+=(openssh-client)
command -v useradd >/dev/null     || need+=(passwd)
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
	# Packages must not start their daemons (sshd on port 22, prometheus) on
	# the host: policy-rc.d refuses every service start during the install.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "$(id -u)" -eq 0 ]; then
	mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
fi
