#!/usr/bin/env bash
# Whole builds of the seed example (train.py: numpy + scikit-learn), vxbuild against buildah on
# the same machine, same base (the python:3.9-slim fixture in a local docker-registry), same
# wheelhouse (pip --no-index --find-links for both), each build followed by a push to that
# registry. Three scenarios, ROUNDS rounds each (default 3), timed by hyperfine:
#
#   cold     vxbuild: empty cache, no lock (resolves)   buildah: bud --no-cache (base in storage)
#   cold-locked  vxbuild: empty cache, vxbuild.lock committed (no resolution); buildah as cold
#   cold-zstd  the same as cold, layers compressed with zstd by both
#   code     train.py edited, everything else warm      buildah: bud --layers (10+ rounds)
#   code-memreg  the same, pushed to a second registry whose storage is in /dev/shm
#   bump     scikit-learn 1.6.0 -> 1.6.1 from a warm 1.6.0 state (restored before each round)
#
# Then memory: a project whose dependency is a 600 MB wheel of incompressible data, built and
# pushed by vxbuild, peak RSS from GNU time. Prints medians, ratios (buildah / vxbuild) and the
# RSS as a Markdown table; WORK=DIR keeps the working files (default: a temp dir, removed).
#
# Needs: cargo, docker-registry, skopeo, buildah, hyperfine, python3 with pip, GNU time, network
# to PyPI once (the wheelhouse is cached in ~/.cache/vxbuild-bench).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${WORK:-}
if [[ -z "$WORK" ]]; then
    WORK=$(mktemp -d /tmp/vx-compare.XXXXXX)
    KEEP=0
else
    mkdir -p "$WORK"
    KEEP=1
fi
WHEELHOUSE=${WHEELHOUSE:-$HOME/.cache/vxbuild-bench/wheelhouse}
BUILDAH=(buildah --root "$WORK/buildah/root" --runroot "$WORK/buildah/run" --storage-driver overlay)
say() { printf 'compare: %s\n' "$*" >&2; }

REG_PID=
MEMREG_PID=
cleanup() {
    if [[ -n "$REG_PID" ]]; then kill "$REG_PID" 2>/dev/null || true; fi
    if [[ -n "$MEMREG_PID" ]]; then kill "$MEMREG_PID" 2>/dev/null || true; fi
    rm -rf "${MEMREG_DIR:-/nonexistent}"
    if [[ $KEEP == 0 ]]; then
        "${BUILDAH[@]}" rm -a >/dev/null 2>&1 || true
        "${BUILDAH[@]}" rmi -a -f >/dev/null 2>&1 || true
        umount "$WORK/buildah/root/overlay" 2>/dev/null || true
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

for tool in docker-registry skopeo buildah hyperfine python3; do
    command -v "$tool" >/dev/null || { say "$tool is not on PATH (scripts/install-deps.sh)"; exit 2; }
done
[[ -x /usr/bin/time ]] || { say "GNU time is needed (apt-get install time)"; exit 2; }

say "building vxbuild (release)"
cargo build --release --quiet --manifest-path "$REPO/Cargo.toml"
VX="$REPO/target/release/vxbuild"

say "base image fixture"
LAYOUT=${VXBUILD_BASE_LAYOUT:-$(bash "$REPO/tests/fixtures/base-image.sh" | tail -1)}

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
mkdir -p "$WORK/registry"
cat >"$WORK/registry/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry/storage
  delete:
    enabled: true
http:
  addr: $REG
EOF
docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry/log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
# A second registry whose storage is in memory (/dev/shm), for one more code-change row: how much
# of that scenario is the registry's own disk (the reference registry fsyncs every file it writes).
MEMREG_DIR=$(mktemp -d /dev/shm/vx-compare-registry.XXXXXX)
MEMPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MEMREG=127.0.0.1:$MEMPORT
sed -e "s#rootdirectory: .*#rootdirectory: $MEMREG_DIR#" -e "s#addr: .*#addr: $MEMREG#" \
    "$WORK/registry/config.yml" >"$WORK/registry/memory.yml"
docker-registry serve "$WORK/registry/memory.yml" >"$WORK/registry/memory.log" 2>&1 &
MEMREG_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MEMPORT") 2>/dev/null && break; sleep 0.1; done
BASE=$REG/library/python:3.9-slim
skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$LAYOUT:3.9-slim" "docker://$BASE"

say "wheelhouse ($WHEELHOUSE)"
mkdir -p "$WHEELHOUSE"
for spec in "numpy==2.0.2 scikit-learn==1.6.0" "numpy==2.0.2 scikit-learn==1.6.1"; do
    # shellcheck disable=SC2086
    python3 -m pip download --quiet --only-binary=:all: --python-version 3.9 --implementation cp \
        --abi cp39 --platform manylinux2014_x86_64 -d "$WHEELHOUSE" $spec
done

# Two copies of the seed project: one per tool.
seed() {
    mkdir -p "$1"
    cp "$REPO/examples/train/train.py" "$1/"
    printf 'numpy==2.0.2\nscikit-learn==%s\n' "$2" >"$1/requirements.txt"
    cat >"$1/Dockerfile" <<EOF
FROM $BASE
WORKDIR /usr/app
COPY requirements.txt .
RUN pip install --no-cache-dir --no-index --find-links /wheels -r requirements.txt
COPY train.py .
ENTRYPOINT ["python", "train.py"]
EOF
    printf 'Dockerfile\n' >"$1/.dockerignore"
}
VXP=$WORK/vx-project
BBP=$WORK/buildah-project
seed "$VXP" 1.6.1
seed "$BBP" 1.6.1

vx() { # vx CACHE TAG [flags]
    local cache=$1 tag=$2
    shift 2
    "$VX" build "$VXP" --base-image "$BASE" --no-index --find-links "$WHEELHOUSE" \
        --cache-dir "$cache" --image "${TARGET_REG:-$REG}/bench/vxbuild:$tag" --push -q "$@"
}
bb() { # bb TAG [bud flags]; BB_PUSH_FLAGS: extra words for buildah push
    local tag=$1 push_flags
    shift
    read -r -a push_flags <<<"${BB_PUSH_FLAGS:-}"
    "${BUILDAH[@]}" bud -q --isolation chroot --tls-verify=false -v "$WHEELHOUSE:/wheels:ro" \
        "$@" -t "bench/buildah:$tag" "$BBP" >/dev/null &&
        "${BUILDAH[@]}" push -q --tls-verify=false "${push_flags[@]}" "bench/buildah:$tag" \
            "docker://${TARGET_REG:-$REG}/bench/buildah:$tag"
}
export -f vx bb
export VX VXP BBP BASE WHEELHOUSE REG MEMREG
BUILDAH_STR="${BUILDAH[*]}"
export BUILDAH_STR
# hyperfine runs commands in a fresh shell: re-create the array there.
# shellcheck disable=SC2016 # expanded by hyperfine's shell, not here
PRE='BUILDAH=($BUILDAH_STR);'

say "warm-up: base into buildah's storage, vxbuild's lock"
bash -c "$PRE bb warmup --layers"
vx "$WORK/vx-warm" warmup >/dev/null
cp "$VXP/vxbuild.lock" "$WORK/lock-1.6.1"

results=()
run() { # run NAME PREPARE-VX CMD-VX PREPARE-BB CMD-BB; RUNS overrides ROUNDS
    local name=$1 runs=${RUNS:-$ROUNDS}
    say "$name: $runs round(s) each"
    # Let the previous scenario's writes reach the disk first, and each round's before the next
    # (in every prepare): on ext4 an fsync waits for other files' dirty data too, so the registry's
    # fsyncs in one tool's round would otherwise pay for the other tool's writes.
    sync
    sleep 2
    hyperfine --shell bash --style none --warmup "${WARMUP:-0}" --runs "$runs" --export-json "$WORK/$name.json" \
        --command-name "buildah $name" --prepare "$PRE $4; sync" "$PRE $5" \
        --command-name "vxbuild $name" --prepare "$PRE $2; sync" "$PRE $3" >&2
    results+=("$name")
}

# cold: an empty vxbuild cache and no lock; buildah without its layer cache.
run cold \
    "rm -rf $WORK/vx-cold $VXP/vxbuild.lock" \
    "vx $WORK/vx-cold cold --no-lock" \
    "true" \
    "bb cold --no-cache"

# cold-locked: an empty cache, the lock a project commits (vxbuild resolves nothing); buildah
# as in cold (pip resolves the pinned requirements).
run cold-locked \
    "rm -rf $WORK/vx-cold && cp $WORK/lock-1.6.1 $VXP/vxbuild.lock" \
    "vx $WORK/vx-cold coldlocked --locked" \
    "true" \
    "bb coldlocked --no-cache"

# cold-zstd: the same as cold with zstd layers (vxbuild --compression zstd, buildah push
# --compression-format zstd).
run cold-zstd \
    "rm -rf $WORK/vx-cold $VXP/vxbuild.lock" \
    "vx $WORK/vx-cold coldzstd --no-lock --compression zstd" \
    "true" \
    "BB_PUSH_FLAGS='--compression-format zstd' bb coldzstd --no-cache"

# code: an edited train.py, everything else warm.
vx "$WORK/vx-warm" code >/dev/null
bash -c "$PRE bb code --layers"
# Milliseconds: more rounds, and one untimed round first, cost nothing here.
RUNS=$((ROUNDS > 10 ? ROUNDS : 10)) WARMUP=1 run code \
    "echo \"# edit \$(date +%s%N)\" >>$VXP/train.py" \
    "vx $WORK/vx-warm code" \
    "echo \"# edit \$(date +%s%N)\" >>$BBP/train.py" \
    "bb code --layers"

# code-memreg: the same, pushed to the registry whose storage is in memory (the base stays where
# it is; each tool's first push there, untimed, uploads it).
TARGET_REG=$MEMREG vx "$WORK/vx-warm" code >/dev/null
TARGET_REG=$MEMREG bash -c "$PRE bb code --layers"
RUNS=$((ROUNDS > 10 ? ROUNDS : 10)) WARMUP=1 run code-memreg \
    "echo \"# edit \$(date +%s%N)\" >>$VXP/train.py" \
    "TARGET_REG=$MEMREG vx $WORK/vx-warm code" \
    "echo \"# edit \$(date +%s%N)\" >>$BBP/train.py" \
    "TARGET_REG=$MEMREG bb code --layers"

# bump: from a warm scikit-learn 1.6.0 state to 1.6.1, neither tool having seen 1.6.1 installed
# before. Each round starts from the same 1.6.0 state: vxbuild's cache (a fresh one, built with
# 1.6.0 only) and lock restored from a snapshot; buildah's storage emptied of everything but the
# 1.6.0 image and its layers.
sed -i 's/scikit-learn==.*/scikit-learn==1.6.0/' "$VXP/requirements.txt" "$BBP/requirements.txt"
rm -f "$VXP/vxbuild.lock"
vx "$WORK/vx-bump" bump >/dev/null
cp -a "$WORK/vx-bump" "$WORK/vx-snapshot"
cp "$VXP/vxbuild.lock" "$WORK/lock-1.6.0"
"${BUILDAH[@]}" rmi -a -f >/dev/null
bash -c "$PRE bb base160 --layers"
run bump \
    "rm -rf $WORK/vx-bump && cp -a $WORK/vx-snapshot $WORK/vx-bump && cp $WORK/lock-1.6.0 $VXP/vxbuild.lock && sed -i s/scikit-learn==.*/scikit-learn==1.6.1/ $VXP/requirements.txt" \
    "vx $WORK/vx-bump bump" \
    "\${BUILDAH[@]} rmi -f bench/buildah:bump >/dev/null 2>&1; \${BUILDAH[@]} rmi --prune >/dev/null 2>&1; sed -i s/scikit-learn==.*/scikit-learn==1.6.1/ $BBP/requirements.txt" \
    "bb bump --layers"

say "memory: a 600 MB wheel of incompressible data"
MEM=$WORK/mem
mkdir -p "$MEM/wheels" "$MEM/project"
python3 - "$MEM/wheels" <<'EOF'
import hashlib, base64, os, sys, zipfile
out = sys.argv[1]
name, version = "bigweights", "1.0"
di = f"{name}-{version}.dist-info"
files = {f"{name}/__init__.py": b"import os\nSIZE = os.path.getsize(os.path.join(os.path.dirname(__file__), 'weights.bin'))\n"}
meta = {f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{di}/WHEEL": b"Wheel-Version: 1.0\nGenerator: compare.sh\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
path = os.path.join(out, f"{name}-{version}-py3-none-any.whl")
record = []
def rec(n, h, s):
    record.append(f"{n},sha256={base64.urlsafe_b64encode(h).rstrip(b'=').decode()},{s}")
with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    for n, b in {**files, **meta}.items():
        z.writestr(n, b)
        rec(n, hashlib.sha256(b).digest(), len(b))
    h = hashlib.sha256()
    with z.open(f"{name}/weights.bin", "w", force_zip64=True) as f:
        for _ in range(600):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            f.write(chunk)
    rec(f"{name}/weights.bin", h.digest(), 600 << 20)
    record.append(f"{di}/RECORD,,")
    z.writestr(f"{di}/RECORD", "\n".join(record) + "\n")
EOF
printf 'import bigweights\nprint("weights", bigweights.SIZE)\n' >"$MEM/project/train.py"
printf 'bigweights\n' >"$MEM/project/requirements.txt"
# Twice: scratch trees on disk (--scratch disk), then where they go by default (the 600 MB
# staging root in /dev/shm: shared memory, not the process's RSS).
for scratch in disk auto; do
    rm -rf "$MEM/cache"
    /usr/bin/time -f '%M %e' -o "$MEM/time-$scratch" "$VX" build "$MEM/project" --base-image "$BASE" \
        --no-index --find-links "$MEM/wheels" --cache-dir "$MEM/cache" --image "$REG/bench/memory:v1" \
        --push -q --scratch "$scratch" >/dev/null
done
read -r RSS_KB MEM_S <"$MEM/time-disk"
read -r RSS_AUTO_KB MEM_AUTO_S <"$MEM/time-auto"

python3 - "$WORK" "$RSS_KB" "$MEM_S" "$RSS_AUTO_KB" "$MEM_AUTO_S" "${results[@]}" <<'EOF'
import json, os, platform, sys
work, rss_kb, mem_s, names = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[6:]
rss_auto_kb, mem_auto_s = int(sys.argv[4]), float(sys.argv[5])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
rounds = lambda n: len(json.load(open(os.path.join(work, n + ".json")))["results"][0]["times"])
print(f"Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; medians of "
      + ", ".join(f"{rounds(n)} ({n})" for n in names) + " rounds.\n")
print("| scenario (build + push) | buildah | vxbuild | buildah / vxbuild |")
print("|---|---:|---:|---:|")
def fmt(s):
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"
for n in names:
    r = {x["command"].split()[0]: x["median"] for x in json.load(open(os.path.join(work, n + ".json")))["results"]}
    print(f"| {n} | {fmt(r['buildah'])} | {fmt(r['vxbuild'])} | {r['buildah'] / r['vxbuild']:.1f}x |")
print(f"\nvxbuild peak RSS building and pushing a 600 MB incompressible wheel: {rss_kb / 1024:.0f} MB "
      f"with --scratch disk ({mem_s:.1f} s); {rss_auto_kb / 1024:.0f} MB with the default --scratch auto "
      f"({mem_auto_s:.1f} s; the staging root in /dev/shm, not counted in RSS).")
EOF
