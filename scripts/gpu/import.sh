#!/usr/bin/env bash
# Here, after a GPU run: bring wait.sh's runs.tar.xz into docs/results/paper. Usage:
#   bash scripts/gpu/import.sh /work/.device/N/runs.tar.xz [CONFIG...]
# The archive holds every file written since go.sh started, so a cell finished before it may
# come back as a cell.json alone (the runner rewrites it when it passes the cell): only cells
# whose eval.json came back, and say "done", replace the folder here; searches come back only
# with their summary.json (a cut-off search resumes from its study on the next run). Then the
# reports of CONFIG (default configs/allocation.yaml) are written again from the cell folders.
set -euo pipefail
archive=${1:?usage: import.sh RUNS.tar.xz [CONFIG...]}
shift
[ -f "$archive" ] || { echo "import.sh: no archive at $archive" >&2; exit 1; }
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(configs/allocation.yaml)
root=$(git rev-parse --show-toplevel)
cd "$root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xJf "$archive" -C "$tmp"
src=$tmp/docs/results/paper
dst=docs/results/paper
cells=0 searches=0
for cell in "$src"/*/*/seed*; do
    [ -f "$cell/eval.json" ] && [ -f "$cell/cell.json" ] || continue
    grep -q '"state": "done"' "$cell/cell.json" || continue
    rel=${cell#"$src"/}
    rm -rf "${dst:?}/$rel.new" && mkdir -p "$(dirname "$dst/$rel")"
    cp -a "$cell" "$dst/$rel.new"   # beside the old folder, then swapped: nothing half-copied
    rm -rf "${dst:?}/$rel" && mv "$dst/$rel.new" "$dst/$rel"
    cells=$((cells + 1))
done
for search in "$src"/searches/*-*; do
    [ -f "$search/summary.json" ] || continue
    name=$(basename "$search")
    rm -rf "${dst:?}/searches/$name" && cp -a "$search" "$dst/searches/$name"
    if [ -d "$src/searches/logs/$name" ]; then
        rm -rf "${dst:?}/searches/logs/$name" && cp -a "$src/searches/logs/$name" "$dst/searches/logs/$name"
    fi
    searches=$((searches + 1))
done
for profile in "$src"/profiles/profile-*; do   # a new space's profile, which its searches read
    [ -f "$profile/sensitivity.json" ] && [ ! -e "$dst/profiles/$(basename "$profile")" ] || continue
    cp -a "$profile" "$dst/profiles/$(basename "$profile")"
done
echo "import.sh: $cells finished cells and $searches finished searches from $archive"
python3 -m qradaptor experiment "${configs[@]}" -o "$dst" --report-only
