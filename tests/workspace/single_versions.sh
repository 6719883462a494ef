#!/usr/bin/env bash
# One version each of the crates whose duplicates break wire types or double the binary.
set -euo pipefail
dups=$(cargo tree --workspace -d --depth 0 --prefix none --format '{p}' 2>/dev/null | awk '{print $1}' | sort -u)
bad=0
for crate in tonic prost hyper h2 opentelemetry; do
  if grep -qx "$crate" <<<"$dups"; then
    echo "more than one version of $crate:" >&2
    cargo tree --workspace -i "$crate" --prefix none 2>&1 | head -5 >&2
    bad=1
  fi
done
[ "$bad" = 0 ] && echo "one version each of tonic, prost, hyper, h2, opentelemetry"
exit $bad
