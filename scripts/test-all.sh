#!/usr/bin/env bash
# The README's test command (`npm run test:all`): on a fresh Debian 12 machine (root, or a user with sudo)
# installs what the tests need, starts a throwaway PostgreSQL for the storage tests, then runs the whole
# suite (`npm test`: build, typecheck, lint, every test file on PGlite and PostgreSQL, leak check).
# Idempotent: on a machine already set up, the first two steps find everything in place and do nothing.
# Expects `npm ci` to have run (it installs the npm dependencies and builds bin/kiln.js's bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "test-all: installing the test packages and starting PostgreSQL needs root" >&2
    echo "how to fix: run it as root, or install sudo" >&2
    exit 2
  fi
  as_root=(sudo --preserve-env=DEBIAN_FRONTEND,PATH)
fi

echo "--- Debian packages (kiln setup --with-test-deps)"
"${as_root[@]}" node bin/kiln.js setup --with-test-deps

echo "--- PostgreSQL server for the storage tests (scripts/ci-postgres.sh)"
if [ -z "${KILN_TEST_DATABASE_URL:-}" ]; then
  # Assigned first: `eval "$(cmd)"` would hide cmd's failure from `set -e`.
  pg_env=$("${as_root[@]}" bash scripts/ci-postgres.sh)
  eval "$pg_env"
fi
export KILN_TEST_DATABASE_URL
echo "KILN_TEST_DATABASE_URL=$KILN_TEST_DATABASE_URL"

echo "--- tests (npm test)"
npm test
