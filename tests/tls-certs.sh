#!/usr/bin/env bash
# Makes a test CA and what it signed in DIR, under the names qemu, nbdkit and libnbd look for:
# ca-cert.pem, server-cert.pem and server-key.pem (for 127.0.0.1 and localhost),
# client-cert.pem and client-key.pem (EC P-256, valid 2 days; keys mode 0600).
#   bash tests/tls-certs.sh DIR
set -euo pipefail
dir=${1:?usage: tests/tls-certs.sh DIR}
command -v openssl >/dev/null || { echo "tests/tls-certs.sh needs openssl: apt-get install -y openssl" >&2; exit 1; }
mkdir -p "$dir"; cd "$dir"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -keyout ca-key.pem -out ca-cert.pem -days 2 -subj "/CN=mirrorctl test CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
for who in server client; do
  openssl req "${ec[@]}" -keyout $who-key.pem -out $who.csr -subj "/CN=$who" 2>/dev/null
  u=serverAuth; [ $who = client ] && u=clientAuth
  printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=%s\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' $u >$who.ext
  openssl x509 -req -in $who.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
    -out $who-cert.pem -days 2 -extfile $who.ext 2>/dev/null
done
chmod 600 ./*-key.pem
