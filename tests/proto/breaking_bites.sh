#!/usr/bin/env bash
# Proves `buf breaking` bites: the untouched tree passes against the baseline,
# and each deliberate break made in a scratch copy fails it.
set -euo pipefail
: "${BUF:?path to buf}" "${BASELINE:?path to the baseline image}"
root=$(pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

check() { # name, sed expression on a file, file, expected outcome (pass|fail)
  local name=$1 expr=$2 file=$3 want=$4
  rm -rf "$scratch/tree" && mkdir -p "$scratch/tree"
  cp -r "$root/proto" "$root/buf.yaml" "$scratch/tree/"
  if [ -n "$expr" ]; then
    sed -i "$expr" "$scratch/tree/$file"
    if cmp -s "$root/$file" "$scratch/tree/$file"; then
      echo "FAIL $name: the edit changed nothing, the test is wrong" >&2; exit 1
    fi
  fi
  local got=pass
  (cd "$scratch/tree" && "$root/$BUF" breaking --against "$root/$BASELINE" >"$scratch/out" 2>&1) || got=fail
  if [ "$got" != "$want" ]; then
    echo "FAIL $name: buf breaking gave $got, wanted $want" >&2; cat "$scratch/out" >&2; exit 1
  fi
  echo "ok   $name ($got)"
}

check "untouched tree" "" "" pass
check "field type changed" 's/uint64 sequence = 1;/string sequence = 1;/' proto/flowplane/data/v1/data.proto fail
check "field deleted" '/string mime_type = 2;/d' proto/flowplane/data/v1/data.proto fail
check "rpc deleted" '/rpc ValidatePipeline(/d' proto/flowplane/streaming/v1/streaming.proto fail
check "field added" 's/^  string mime_type = 2;/  string mime_type = 2;\n  string codec = 3;/' proto/flowplane/data/v1/data.proto pass
