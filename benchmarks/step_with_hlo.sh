#!/usr/bin/env bash
# One benchmarked train step with its optimized HLO kept, and the count of transpose kernels and
# batch-minor arrays in it (the layout problem of benchmarks/README.md's H100 section):
#   bash benchmarks/step_with_hlo.sh OUTDIR NAME CONFIG [--config.K=V ...]
# Writes OUTDIR/NAME.json (train_step.py's figures) and OUTDIR/NAME.after_optimizations.txt.gz.
set -uo pipefail
out=$1 name=$2 config=$3
shift 3
mkdir -p "$out"
dump="$out/dump_$name"
XLA_FLAGS="${XLA_FLAGS:-} --xla_dump_to=$dump --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*train_step.*" \
  python3 benchmarks/train_step.py --config "$config" --synthetic --steps "${STEPS:-15}" \
    --warmup "${WARMUP:-3}" --json "$out/$name.json" "$@" \
  | grep -E "compile_s|step_s_median|examples_per_s|tokens_per_s|^mfu"
hlo=$(ls -S "$dump"/*train_step*after_optimizations.txt 2>/dev/null | head -1)
[ -n "$hlo" ] && gzip -c "$hlo" > "$out/$name.after_optimizations.txt.gz"
rm -rf "$dump"
python3 - "$out/$name.after_optimizations.txt.gz" <<'PY'
import gzip, re, sys
try:
    text = gzip.open(sys.argv[1], 'rt').read()
except OSError:
    sys.exit('no optimized HLO was dumped')
entry = text[text.rfind('\nENTRY'):]
print('transpose kernels in the entry computation:',
      len(re.findall(r'^\s*%\S*transpose\S* = ', entry, re.M)))
PY
