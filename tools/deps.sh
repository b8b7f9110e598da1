#!/bin/sh
# Installs what nsgate needs on Debian 12 (as root): to build and install it, and with --test
# also what the test suite uses (the reference tools as oracles, real clients, strace).
set -eu
build="make nftables dnsmasq-base gcc libc6-dev python3 python3-dev python3-pip python3-venv libcap2-bin libseccomp-dev scdoc"
test="uidmap lxc openvswitch-switch rootlesskit podman busybox-static util-linux strace iproute2 procps iputils-ping debhelper dpkg-dev python3-cffi rpm man-db groff-base git"
packages=$build
[ "${1:-}" = "--test" ] && packages="$build $test"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $packages >/dev/null
