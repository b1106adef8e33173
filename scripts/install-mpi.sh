#!/usr/bin/env bash
# Installs what the `mpi` feature needs and is missing: Open MPI (mpirun and
# the headers and libraries rsmpi builds against) and libclang (rsmpi's
# bindgen). Debian or Ubuntu, as root or with sudo. Does nothing when all of
# it is there already, so it is safe to run every time (.ci/run does).
set -euo pipefail

have_mpirun() { command -v mpirun >/dev/null 2>&1; }
have_headers() {
    # Debian puts mpi.h under the multiarch include directory; mpicc knows where.
    command -v mpicc >/dev/null 2>&1 && [ -n "$(mpicc --showme:incdirs 2>/dev/null)" ] \
        && find $(mpicc --showme:incdirs) -maxdepth 1 -name mpi.h 2>/dev/null | grep -q .
}
have_libclang() {
    ldconfig -p 2>/dev/null | grep -q 'libclang\(-[0-9.]*\)\?\.so' \
        || compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null
}

if have_mpirun && have_headers && have_libclang; then
    echo "install-mpi: mpirun, mpi.h and libclang already present"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-mpi: no apt-get here; install Open MPI (mpirun, mpi.h) and libclang yourself" >&2
    exit 1
fi

sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-mpi: installing openmpi-bin libopenmpi-dev libclang-dev"
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends \
    openmpi-bin libopenmpi-dev libclang-dev >/dev/null

if ! { have_mpirun && have_headers && have_libclang; }; then
    echo "install-mpi: installed, but mpirun, mpi.h or libclang is still missing" >&2
    exit 1
fi
echo "install-mpi: done ($(mpirun --version 2>/dev/null | head -n1))"
