#!/usr/bin/env bash
# Check that plugin libraries load alone from any folder (issue 15, defect 1):
#   plugins/check_self_contained.sh LIB.so [BUILD_DIR]
# Fails (exit 1, one line per problem) when a library has an RPATH/RUNPATH (a build-tree path
# only works on the machine that built it), needs the shared CUDA runtime (libcudart: pip-only
# CUDA and other machines may lack it) or another stagevar library (only `engines/` is copied).
set -euo pipefail
lib=${1:?usage: check_self_contained.sh LIB.so [BUILD_DIR]}
build=${2:-}
status=0
dynamic=$(readelf -d "$lib")
if grep -Eq '\((RPATH|RUNPATH)\)' <<<"$dynamic"; then
  echo "$lib: has an RPATH/RUNPATH $(grep -E '\((RPATH|RUNPATH)\)' <<<"$dynamic" | sed 's/.*: //'): it must load without a build-tree path" >&2
  status=1
fi
needed=$(grep -E '\(NEEDED\)' <<<"$dynamic" | sed -E 's/.*\[(.*)\]/\1/' || true)
for dep in $needed; do
  case "$dep" in
    libcudart*) echo "$lib: needs the shared CUDA runtime $dep; link cudart_static" >&2; status=1 ;;
    libstagevar*) echo "$lib: needs $dep, which is not copied beside the engines; link it statically" >&2; status=1 ;;
  esac
done
if [ -n "$build" ] && command -v ldd >/dev/null; then
  # Resolved from anywhere but the build tree (ldd errors for a missing non-system library).
  if ldd "$lib" 2>&1 | grep -F "$build" >&2; then
    echo "$lib: resolves a dependency inside the build folder $build" >&2
    status=1
  fi
fi
[ $status -eq 0 ] && echo "$lib: self-contained (NEEDED: $(echo $needed | tr '\n' ' '))"
exit $status
