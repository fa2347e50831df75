#!/bin/sh
# Creates the per-install keys docker-compose.yml mounts as Docker secrets, once:
#   ./secrets/valet_master_key    the secret store's master key (32 random bytes, base64)
#   ./secrets/valet_signing_key   the local-dev issuer's token signing key (32 random bytes, base64)
# An existing file is never overwritten (a new master key could not open the store).
# The container runs as uid 1000 (`node`) and reads the files where they are; if your uid is
# another one, `sudo chown 1000 secrets/*` after running this.
set -eu
umask 077
dir=${1:-secrets}
mkdir -p "$dir"
for name in valet_master_key valet_signing_key; do
  file="$dir/$name"
  if [ -e "$file" ]; then
    echo "kept    $file"
    continue
  fi
  head -c 32 /dev/urandom | base64 > "$file.tmp"
  mv "$file.tmp" "$file"
  echo "created $file"
done
