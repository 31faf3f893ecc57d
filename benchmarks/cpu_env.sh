#!/usr/bin/env bash
# Runs a command (e.g. `dul-jax train ...` or `python benchmarks/train_step.py ...`) with glibc's
# malloc set so that XLA:CPU training steps reuse their memory. Opt-in; nothing in dul_jax sets it.
#
#   benchmarks/cpu_env.sh dul-jax train --config C --workdir W --config.runtime.cpu_async_dispatch=False
#
# Why (measured in benchmarks/README.md, "The CPU allocator recipe"): XLA:CPU allocates a step's
# temporaries afresh on every call as one large block, which glibc maps and unmaps each time, so
# the kernel faulted and zero-filled it on every step (~25% of the CPU target step).
# - glibc.malloc.hugetlb=1 (glibc >= 2.35): malloc's memory on transparent huge pages, 512x fewer
#   faults where the kernel's THP mode is `madvise`.
# - glibc.malloc.mmap_max=0 with trimming off: freed memory stays in the heap and the next step
#   reuses the same mapped pages. Only the main thread's heap holds blocks this large, so pair it
#   with --config.runtime.cpu_async_dispatch=False (the step then runs on the calling thread) for
#   steps with more than ~32 MB of temporaries; smaller steps are faster with async dispatch.
#   The process keeps its peak memory until it exits.
# Tunables the caller already set in GLIBC_TUNABLES keep the caller's values. glibc reads them
# only at process start, which is why this is a launcher and not a library call.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
wanted=(glibc.malloc.mmap_max=0 glibc.malloc.trim_threshold=1099511627776)
version=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
if [ -n "$version" ] && printf '2.35\n%s\n' "$version" | sort -V -C; then
  wanted+=(glibc.malloc.hugetlb=1)
fi
tunables=${GLIBC_TUNABLES:-}
for item in "${wanted[@]}"; do
  case ":$tunables:" in
    *":${item%%=*}="*) ;;                       # the caller's own value wins
    *) tunables=${tunables:+$tunables:}$item ;;
  esac
done
export GLIBC_TUNABLES=$tunables
exec "$@"
