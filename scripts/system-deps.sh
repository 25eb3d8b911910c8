#!/usr/bin/env bash
# Install the Debian packages iotrust's tests (and the broker) need, when they are absent.
# Idempotent; runs apt-get only if something is missing. Usage: scripts/system-deps.sh [run|test]
set -euo pipefail
mode=${1:-test}
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have openssl || need+=(openssl)
if [ "$mode" = test ]; then
  have softhsm2-util || need+=(softhsm2)
  have mosquitto || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
  have mosquitto_pub || need+=(mosquitto-clients)
  have psql || need+=(postgresql-client)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  have chromium || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
