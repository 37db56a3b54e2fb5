#!/bin/sh
# Peak RSS of `stagetime run` (embedded: memory store, local backend) of one
# run of N trivial tasks (`command: "true"`, one stage) at max_parallel P,
# measured by /usr/bin/time -v. Issue 11, defect 3: 5,001 tasks at
# max_parallel 2 grew to 2.7 GB; memory must follow the run, not P.
#
#   scripts/run_rss.sh [STAGETIME_BINARY] [N] [P]...
#
# Defaults: the release example built by
# `cargo build --release --example stagetime`, N = 5001, P = 2 8 64.
# Prints one line per P: tasks, max_parallel, wall seconds, peak RSS (KiB).
set -eu
bin=${1:-${CARGO_TARGET_DIR:-target}/release/examples/stagetime}
n=${2:-5001}
shift 2 2>/dev/null || shift $#
[ $# -gt 0 ] || set -- 2 8 64
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for p in "$@"; do
  {
    printf 'repo: rss\ncommit: c%s\noptions: {max_parallel: %s}\ntasks:\n' "$p" "$p"
    i=0
    while [ "$i" -lt "$n" ]; do
      printf '  - {name: t%s, command: "true"}\n' "$i"
      i=$((i + 1))
    done
  } > "$dir/run-$p.yaml"
  /usr/bin/time -v "$bin" run "$dir/run-$p.yaml" --workdir "$dir/work-$p" \
    > "$dir/out-$p" 2> "$dir/time-$p" || {
    echo "stagetime run failed (max_parallel $p):" >&2
    tail -20 "$dir/out-$p" "$dir/time-$p" >&2
    exit 1
  }
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$dir/time-$p")
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$dir/time-$p")
  echo "tasks=$n max_parallel=$p wall=$wall peak_rss_kib=$rss"
done
