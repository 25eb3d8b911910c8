#!/usr/bin/env bash
# Create a private SoftHSM2 token for development (never the system token directory).
#
#   scripts/softhsm.sh DIR [TOKEN_LABEL]
#
# Writes DIR/softhsm2.conf with its own token directory DIR/tokens, initialises a token
# (default label "iotrust") and prints the lines to export. The user PIN is read from
# IOTRUST_PKCS11_PIN and the SO PIN from IOTRUST_PKCS11_SO_PIN; when they are unset
# softhsm2-util asks for them on the terminal. DEVELOPMENT ONLY: softhsm2-util takes PINs
# given in the environment as arguments, visible to other local users while it runs.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 DIR [TOKEN_LABEL]" >&2
  exit 2
fi
command -v softhsm2-util >/dev/null || { echo "softhsm2-util is not installed (apt-get install softhsm2)" >&2; exit 69; }

dir=$(realpath -m "$1")
label=${2:-iotrust}
module=/usr/lib/softhsm/libsofthsm2.so

mkdir -p "$dir/tokens"
chmod 700 "$dir" "$dir/tokens"
conf="$dir/softhsm2.conf"
if [[ ! -e "$conf" ]]; then
  cat >"$conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
fi
export SOFTHSM2_CONF="$conf"

if softhsm2-util --show-slots 2>/dev/null | grep -q "Label:[[:space:]]*${label}[[:space:]]*$"; then
  echo "a token labelled '$label' already exists in $dir" >&2
else
  args=(--init-token --free --label "$label")
  [[ -n "${IOTRUST_PKCS11_PIN:-}" ]] && args+=(--pin "$IOTRUST_PKCS11_PIN")
  [[ -n "${IOTRUST_PKCS11_SO_PIN:-}" ]] && args+=(--so-pin "$IOTRUST_PKCS11_SO_PIN")
  softhsm2-util "${args[@]}" >/dev/null
fi

echo "export SOFTHSM2_CONF=$conf"
echo "# key reference prefix: pkcs11:module=$module;token=$label;object=<key label>"
