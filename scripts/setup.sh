# shellcheck shell=bash
# Sourced by main.sh: its plumbing, none of it a paper command. Create or reuse the virtual
# environment, fetch the bundled dataset, `bash main.sh test` and `bash main.sh results`, and the
# quickstart's closing table.
# VENV (default .venv) and PYTHON (default python3, 3.11) can be overridden from the environment.
set -euo pipefail

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
# OpenMP threads sleep instead of spinning while they wait: with another job on the cores, spinning
# made 2-thread ops many times slower; set it yourself to override
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
PYTHON=${PYTHON:-python3}
FMNIST_DIR=${FMNIST_DIR:-datasets/fashion-mnist}

setup_venv() {  # $1: requirements file
    local req=$1 stamp
    if [ ! -x "$VENV/bin/python" ]; then
        echo "[setup] creating $VENV with $($PYTHON --version)"
        "$PYTHON" -m venv "$VENV"
    fi
    stamp="$VENV/.installed-$(cat requirements*.txt | sha1sum | cut -c1-12)-$(basename "$req")"
    if [ ! -f "$stamp" ]; then
        echo "[setup] installing $req into $VENV (torch installs from local disk: ~1-2 min)"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
        touch "$stamp"
    fi
}

fetch_fashion_mnist() {  # Debian's dataset-fashion-mnist package: IDX files, no run-time download
    local files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
    local f missing=0 tmp
    for f in $files; do [ -f "$FMNIST_DIR/$f" ] || missing=1; done
    [ "$missing" = 0 ] && return 0
    mkdir -p "$FMNIST_DIR"
    if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
        for f in $files; do cp /usr/share/datasets/fashion-mnist/$f "$FMNIST_DIR/"; done
        return 0
    fi
    echo "[setup] fetching Fashion-MNIST from Debian's dataset-fashion-mnist package"
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1); then
        apt-get update -qq >/dev/null 2>&1 || true
        (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1) || {
            echo "error: could not fetch Debian's dataset-fashion-mnist; run 'apt-get update' (as root) or copy the four IDX .gz files into $FMNIST_DIR" >&2
            exit 1; }
    fi
    dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/x"
    for f in $files; do cp "$tmp/x/usr/share/datasets/fashion-mnist/$f" "$FMNIST_DIR/"; done
    rm -rf "$tmp"
}

test() {  # bash main.sh test [fast] [PYTEST ARGS]: fast = without the slow end-to-end runs
    setup_venv requirements-dev.txt
    fetch_fashion_mnist
    local select=()
    if [ "${1:-}" = fast ]; then
        shift
        select=(-m "not slow")  # the slow marker: pytest.ini, tests/conftest.py
    fi
    "$PY" -m pytest -q -p no:cacheprovider "${select[@]}" tests "$@"
}

results() {  # every run under $OUT beside the papers' numbers (Markdown + JSON), and training curves
    # (bundled runs: bash main.sh results --knn-k 200, their kNN protocol)
    "$PY" tools/results_table.py "$OUT" --json "$OUT/results_table.json" "$@" | tee "$OUT/results_table.md"
    local runs
    mapfile -t runs < <(find "$OUT" -name log.txt -printf '%h\n' | sort)  # every run directory
    "$PY" tools/plots.py "${runs[@]}" --out "$OUT/plots"
}

quickstart_table() {  # $1: the quickstart run: its kNN top-1, pretrained vs random init
    "$PY" - "$1" <<'PYEOF'
import json, sys
out = sys.argv[1]
full, sparse = (json.load(open(f"{d}/results.json")) for d in (out, f"{out}/sparse"))
print(f"\nFashion-MNIST weighted kNN top-1 after {full['pretrain']['wall_time_s']:.0f} s of SimCLR "
      f"pretraining ({full['pretrain']['images_per_s']:.0f} img/s):")
print("  bank                         k    pretrained   random init   gain")
for name, r, k in [("60000 train images", full, "20"), ("60000 train images", full, "200"),
                   ("2000 train images (sparse)", sparse, "200")]:
    a, b = r["knn"]["top1"][k], r["knn_random_init"]["top1"][k]
    print(f"  {name:27s} {k:>4s}   {a:9.2f}%   {b:10.2f}%   {a - b:+5.2f}")
print(f"checkpoint, logs and curves: {out}")
PYEOF
}
