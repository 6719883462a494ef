#!/usr/bin/env bash
# Development certificates for mutual TLS: one CA and a certificate per service and for
# a client, each with SANs for 127.0.0.1, localhost and its compose service names; and the
# role tokens (a server token file and one client token file per caller).
# Written to deploy/certs/ (git-ignored). Keys made here are for a laptop, never production.
# The CA key is 0600; the leaf keys are 0640 (directory 0750) so that the compose containers,
# uid 65532 with this group added, can read them. Safe to run again: the CA is kept.
set -euo pipefail

OUT=${CERTS_DIR:-deploy/certs}
DAYS=${CERTS_DAYS:-825}

if ! command -v openssl >/dev/null; then
  echo "certs: openssl not found; installing Debian's openssl" >&2
  if [ "$(id -u)" -eq 0 ]; then apt-get install -y openssl; else sudo apt-get install -y openssl; fi
fi

mkdir -p "$OUT"
chmod 750 "$OUT"
cd "$OUT"

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }

# The CA is kept across runs, so certificates already handed out stay valid.
if [ ! -f ca.pem ] || [ ! -f ca.key ]; then
  ec_key ca.key
  openssl req -x509 -new -key ca.key -out ca.pem -days "$DAYS" -subj "/CN=flowplane dev ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

# leaf NAME USAGES SAN...
leaf() {
  local name=$1 usage=$2
  shift 2
  local sans="IP:127.0.0.1,DNS:localhost"
  for dns in "$@"; do sans+=",DNS:$dns"; done
  ec_key "$name.key"
  chmod 640 "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$name" -out "$name.csr"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$DAYS" \
    -out "$name.pem" -extfile <(printf '%s\n' \
      "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=$usage" \
      "subjectAltName=$sans") 2>/dev/null
  rm -f "$name.csr"
}

# Every service is a server and a client of another (registration, watch, Process, Read and
# Deliver). Besides the compose names, the Kubernetes names of deploy/k8s in namespace
# CERTS_K8S_NAMESPACE (default flowplane): the Services, and one wildcard for the
# processor pods' stable names under their headless Service. A connector host is dialled at the
# address it registers, like a processor host, so its leaf follows the processor's pattern
# (a wildcard under a headless Service flowplane-connect), ready for when deploy/k8s runs one.
ns=${CERTS_K8S_NAMESPACE:-flowplane}
# The compose profile `ha` adds control-plane-1/-2, ha-processor-1/-2 and pipeline-1/-2.
leaf control-plane serverAuth,clientAuth control-plane control-plane-1 control-plane-2 \
  flowplane-control-plane "flowplane-control-plane.$ns.svc"
leaf processor serverAuth,clientAuth processor processor-1 processor-2 ha-processor-1 ha-processor-2 \
  "*.flowplane-processor.$ns.svc"
leaf pipeline serverAuth,clientAuth pipeline pipeline-1 pipeline-2 flowplane-pipeline "flowplane-pipeline.$ns.svc"
leaf connect serverAuth,clientAuth connect "*.flowplane-connect.$ns.svc"
leaf client clientAuth

for name in control-plane processor pipeline connect client; do
  openssl verify -CAfile ca.pem "$name.pem" >/dev/null
done
echo "certs: CA and certificates for control-plane, processor, pipeline, connect, client in $OUT"

# Role tokens, kept across runs like the CA (a running stack keeps working): every server
# reads `tokens`; each caller presents its own file with --client-token-file.
#   register.token  register               processor and connector hosts joining the control plane
#   pipeline.token  read,process,register  the pipeline: read to watch the registry, process to
#                                          call processor hosts and the connectors' Read/Deliver,
#                                          register to claim, commit and release standing pipelines
#   client.token    read,data,register     the CLI or an application: read for components and
#                                          `pipelines list|get|offsets`, data for validate and run,
#                                          register for `pipelines apply|pause|resume|delete|offsets reset`
# `tokens` is rewritten every run from the kept token values, so deploy/certs from an earlier
# run keeps its tokens and gains the roles (servers read it when they start).
token_file() { # NAME ROLES
  if [ ! -s "$1.token" ]; then
    (umask 137 && openssl rand -hex 32 >"$1.token")
  fi
  chmod 640 "$1.token"
  printf '%s %s\n' "$(tr -d '[:space:]' <"$1.token")" "$2"
}
{
  echo "# flowplane role tokens (deploy/scripts/certs.sh): TOKEN ROLE[,ROLE...]"
  token_file register register
  token_file pipeline read,process,register
  token_file client read,data,register
} >tokens.new
chmod 640 tokens.new
mv tokens.new tokens
echo "certs: role tokens register.token, pipeline.token, client.token and the server file tokens in $OUT"
