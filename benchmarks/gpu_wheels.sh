#!/usr/bin/env bash
# Downloads the wheels that the lent GPU machine (CPython 3.12, manylinux x86_64, jax 0.11 + torch with
# CUDA, no package registry) lacks for the GPU suite and the training run, into DIR (default .whl, which
# git ignores). Run it on a machine with a registry, then carry DIR to the GPU machine and pass it to
#   python3 -m benchmarks.gpu_suite --wheels DIR --out "$OUT"
# which installs them (no index, no dependencies) for its parts. The set is docs/gpu.md §2's
# (about 11 MB); promise and dsntnn ship no wheel and are built here (pure Python).
#
#   bash benchmarks/gpu_wheels.sh [DIR] [PYTHON_VERSION]
set -euo pipefail

dir=${1:-.whl}
python_version=${2:-3.12}
mkdir -p "$dir"

binary=(
  tensorflow-datasets==4.9.10 grain==0.2.18 array_record==0.8.6 dm-tree==0.1.10 immutabledict==4.3.1
  simple-parsing==0.1.9 docstring_parser==0.18.0 tensorflow-metadata==1.21.0
  googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2 importlib_resources==7.1.0
  tensorboardX==2.6.5 portpicker==1.6.0
)
source_only=(promise==2.3 dsntnn==0.5.3)

python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 -d "$dir" "${binary[@]}"
# No constraints file here: the build must not be pinned to this machine's own versions.
PIP_CONSTRAINT="" python3 -m pip wheel --quiet --no-deps -w "$dir" "${source_only[@]}"

count=$(find "$dir" -maxdepth 1 -type f -name '*.whl' | wc -l)
echo "$count wheels in $dir ($(du -sh "$dir" | cut -f1)); expected $(( ${#binary[@]} + ${#source_only[@]} ))"
