#!/usr/bin/env bash
# Builds the image and runs it end to end, as a user's `docker run` would, then prints one summary line:
#   1. build it from the Dockerfile;
#   2. start its entrypoint with a small /dev/shm (TL_CHECK_SHM, 64m: Docker's default) and a password;
#   3. wait for the dashboard's health endpoint (and the image's own health check);
#   4. queue a run through the CLI inside it (8 DataLoader workers, 224 px, batch 128) and wait for it to complete;
#      then check the same folder with `check-data` inside it (cleanlab, scikit-learn, the pixel descriptors);
#   5. stop it as `docker stop` does (SIGTERM to its init) and check the run's checkpoint is kept.
# Not part of `make test`: it installs torch's CUDA wheels into an image (minutes, ~25 GB of disk).
#
# With a Docker engine it uses docker. Without one (build machines with no engine and no image
# registry) it uses buildah as root, with the vfs storage driver and chroot isolation:
#   - the base is a Debian bookworm made here with debootstrap (Python 3.11 from Debian, as
#     python:3.11-slim has it: `python` and `pip` on the PATH), given as the Dockerfile's BASE;
#   - pip in the build uses this host's pip configuration (index, mirrors, certificates): its
#     settings are written to the build's /etc/pip.conf, and the local folders and certificates
#     they name are mounted read-only;
#   - the entrypoint runs in the built image with `buildah run --isolation chroot` (host network
#     and process table: the dashboard on 127.0.0.1), in a private mount namespace whose /dev/shm
#     is a tmpfs of TL_CHECK_SHM.
# Settings: TL_CHECK_WORK (work folder, default /var/tmp/transferlab-check: storage, base, state),
# TL_CHECK_SHM (64m), TL_CHECK_KEEP=1 keeps the built image (buildah: in the work folder's storage).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${TL_CHECK_WORK:-/var/tmp/transferlab-check}
SHM=${TL_CHECK_SHM:-64m}
IMAGE=localhost/transferlab:check
BASE=localhost/transferlab-base:bookworm
PASSWORD=check-$RANDOM$RANDOM
HOSTNAME_=transferlab-check
RUN_ARGS=(--epochs 2 --workers 8 --image-size 224 --batch-size 128 --strategy feature_extraction)  # the issue's: 8 workers, 224 px, batch 128
started=$(date +%s)

say() { echo "check-image: $*" >&2; }
fail() { say "FAILED: $*"; echo "check-image: FAILED: $*"; exit 1; }
since() { echo $(( $(date +%s) - $1 )); }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
json_get() { python3 -c "import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1], {}, {'d': d}))" "$1"; }
json_lines() { python3 -c "import json, sys; print('\\n'.join(json.load(sys.stdin) or []))"; }

wait_healthy() {  # port, seconds, pid that must stay alive
  local deadline=$(( $(date +%s) + $2 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "$3" 2>/dev/null || return 1
    if python3 -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:$1/_stcore/health', timeout=3).status != 200)" 2>/dev/null; then
      return 0
    fi
    sleep 2
  done
  return 1
}

mkdir -p "$WORK"
STATE=$WORK/state
rm -rf "$STATE" && mkdir -p "$STATE" && chown 1000:1000 "$STATE"   # the image's user (uid 1000)
LOG=$WORK/container.log
# Where the state folder is mounted inside: the image's /state (VOLUME), except under buildah 1.28,
# whose own volume for an image's VOLUME hides a `-v` at the same path (the entrypoint honours TL_STATE).
docker info >/dev/null 2>&1 && IN=/state || IN=/srv/transferlab-state
# The entrypoint's environment for commands run beside it (it exports these itself).
cli_env=(-e TL_STATE="$IN" -e DATABASE_URL="sqlite:///$IN/experiments.db" -e TL_RUNS_DIR="$IN/runs"
         -e TORCH_HOME="$IN/torch" -e TL_DATA_ROOTS="/data:$IN/demo-data" -e TL_OFFLINE=1)

if docker info >/dev/null 2>&1; then
  # --- with a Docker engine ----------------------------------------------------------------
  ENGINE=docker
  t=$(date +%s)
  say "building $IMAGE with docker"
  docker build -t "$IMAGE" "$ROOT" >&2
  build_s=$(since "$t")
  port=$(free_port)
  name=transferlab-check-$$
  trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
  t=$(date +%s)
  docker run -d --name "$name" --hostname "$HOSTNAME_" --shm-size="$SHM" -p "127.0.0.1:$port:8501" \
    -e TL_PASSWORD="$PASSWORD" -e TL_DEMO_PER_CLASS=20 -e TL_OFFLINE=1 -v "$STATE:/state" "$IMAGE" >/dev/null
  cpid=$(docker inspect -f '{{.State.Pid}}' "$name")
  mapfile -t health < <(docker image inspect -f '{{json .Config.Healthcheck.Test}}' "$IMAGE" | json_lines)
  inside() { docker exec "${cli_env[@]}" "$name" "$@"; }
  stop_it() { docker stop -t 90 "$name" >/dev/null; code=$(docker wait "$name"); }
  image_size="$(( $(docker image inspect -f '{{.Size}}' "$IMAGE") / 1000000 )) MB"
else
  # --- buildah, as root, without an engine or a registry --------------------------------------
  ENGINE=buildah
  [ "$(id -u)" = 0 ] || fail "without a Docker engine this needs root (buildah with chroot isolation)"
  command -v buildah >/dev/null && command -v debootstrap >/dev/null || fail "install buildah and debootstrap (apt-get install buildah debootstrap)"
  B=(buildah --root "$WORK/storage" --runroot "$WORK/runroot" --storage-driver vfs)
  if ! "${B[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
    t=$(date +%s)
    if [ ! -x "$WORK/rootfs/usr/bin/apt-get" ]; then
      say "making a Debian bookworm root with debootstrap"
      rm -rf "$WORK/rootfs"
      debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
        || fail "debootstrap failed: $WORK/debootstrap.log"
    fi
    say "making the base image $BASE (Python 3.11 from Debian)"
    ctr=$("${B[@]}" from scratch)
    "${B[@]}" copy "$ctr" "$WORK/rootfs/" / >/dev/null
    "${B[@]}" run --isolation chroot "$ctr" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends python3 python3-pip python-is-python3 ca-certificates >/dev/null \
      && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED && rm -rf /var/lib/apt/lists/*' >&2
    "${B[@]}" commit --rm "$ctr" "$BASE" >/dev/null
    say "base made in $(since "$t") s"
  fi

  # pip in the build as on this host: its settings in the build's /etc/pip.conf, the local
  # folders they name and the certificates mounted read-only at the same paths.
  volumes=(-v /etc/ssl/certs:/etc/ssl/certs:ro -v "$WORK/pip.conf:/etc/pip.conf:ro")
  python3 - "$WORK/pip.conf" <<'PY' > "$WORK/pip-paths"
import os, re, shlex, subprocess, sys
found = {}
for line in subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout.splitlines():
    m = re.match(r"^([^.]*)\.([\w-]+)='(.*)'$", line)
    if m and m.group(1) in ("global", "install", ":env:"):
        found[m.group(2)] = m.group(3)
with open(sys.argv[1], "w") as f:
    f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in found.items()))
paths = set()
for value in found.values():
    for token in value.split():
        path = token.removeprefix("file://")
        if path.startswith("/") and os.path.exists(path) and not path.startswith("/etc/ssl/certs"):
            paths.add(path.rstrip("/") if os.path.isdir(path) else path)
# A simple index's pages link to files beside it (../files/x.whl): mount the index's parent folder.
print("\n".join(sorted({os.path.dirname(p) if p.endswith("/simple") else p for p in paths})))
PY
  while read -r path; do [ -n "$path" ] && volumes+=(-v "$path:$path:ro"); done < "$WORK/pip-paths"
  say "pip in the build: $(tr '\n' ' ' < "$WORK/pip.conf")"
  t=$(date +%s)
  if [ "${TL_CHECK_REUSE:-0}" = 1 ] && "${B[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1; then
    say "reusing $IMAGE, kept by an earlier check (TL_CHECK_REUSE=1)"
  else
    say "building $IMAGE with buildah (vfs, chroot) on $BASE"
    # --format docker: an OCI image has no HEALTHCHECK; Docker's format, as `docker build` makes, keeps it.
    "${B[@]}" build --isolation chroot --pull=never --format docker --build-arg BASE="$BASE" "${volumes[@]}" \
      -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT" >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; fail "the build failed: $WORK/build.log"; }
  fi
  build_s=$(since "$t")
  image_size=$("${B[@]}" images --format '{{.Size}}' "$IMAGE" | head -1)

  ctr=$("${B[@]}" from --pull=never --name "transferlab-check-$$" "$IMAGE")
  config=$("${B[@]}" inspect --type image "$IMAGE")
  user=$(echo "$config" | json_get 'd["OCIv1"]["config"].get("User") or "root"')
  mapfile -t entry < <(echo "$config" | json_get '"\n".join(d["OCIv1"]["config"]["Entrypoint"])')
  mapfile -t health < <(echo "$config" | json_get '"\n".join(((d.get("Docker") or {}).get("config") or {}).get("Healthcheck", {}).get("Test") or [])')
  port=$(free_port)
  common=(--isolation chroot --hostname "$HOSTNAME_" --user "$user" -v "$STATE:$IN" -e TL_STATE="$IN")
  cli_env+=(-e TL_PORT="$port")  # the host's network: the dashboard is on $port here
  cleanup() {
    [ -n "${cpid:-}" ] && kill -KILL "$cpid" 2>/dev/null || true
    [ -n "${bpid:-}" ] && wait "$bpid" 2>/dev/null || true
    "${B[@]}" rm "$ctr" >/dev/null 2>&1 || true  # a full copy of the image (vfs)
    [ "${TL_CHECK_KEEP:-0}" = 1 ] || "${B[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
  }
  trap cleanup EXIT
  t=$(date +%s)
  # Not PID 1 under chroot isolation: tini registers as the subreaper of what it starts instead.
  unshare -m --propagation private sh -c 'mount -t tmpfs -o size="$0",mode=1777 tmpfs /dev/shm && exec "$@"' "$SHM" \
    "${B[@]}" run "${common[@]}" -e TL_PASSWORD="$PASSWORD" -e TL_HOST=127.0.0.1 -e TL_PORT="$port" \
    -e TL_DEMO_PER_CLASS=20 -e TL_OFFLINE=1 -e TINI_SUBREAPER=1 "$ctr" -- "${entry[@]}" >"$LOG" 2>&1 &
  bpid=$!
  descendants() { local c; for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do echo "$c"; descendants "$c"; done; }
  for _ in $(seq 60); do  # the container's init: the first process of the entrypoint, below buildah's own
    cpid=$(for p in $(descendants "$bpid"); do [ "$(tr '\0' ' ' 2>/dev/null < /proc/"$p"/cmdline)" = "${entry[*]} " ] && echo "$p"; done | head -1 || true)
    [ -n "$cpid" ] && break
    sleep 1
  done
  [ -n "$cpid" ] || { cat "$LOG" >&2; fail "the entrypoint did not start"; }
  inside() { "${B[@]}" run "${common[@]}" "${cli_env[@]}" "$ctr" -- "$@"; }
  stop_it() { kill -TERM "$cpid"; code=0; wait "$bpid" || code=$?; bpid=; }
fi

# --- the same checks, either way ---------------------------------------------------------------
say "started ($ENGINE, /dev/shm $SHM, a password); waiting for the dashboard's health endpoint"
wait_healthy "$port" 600 "$cpid" || { tail -40 "$LOG" >&2; fail "the dashboard never answered /_stcore/health"; }
health_s=$(since "$t")
# The image's own HEALTHCHECK, as the engine runs it: ["CMD", command...].
[ "${health[0]:-}" = CMD ] || fail "the image has no HEALTHCHECK [\"CMD\", ...] (found: ${health[*]:-none})"
inside "${health[@]:1}" >&2 || fail "the image's health check (${health[*]:1}) failed while the dashboard answered"
say "healthy after $health_s s; queueing a run through the CLI inside"
queued=$(inside python -m tl_core run --data "$IN/demo-data/animals" "${RUN_ARGS[@]}" --detach --json) \
  || fail "queueing the run failed: $queued"
run_id=$(echo "$queued" | tail -1 | json_get 'd["run_id"]')
t=$(date +%s)
status=queued
while [ "$(since "$t")" -lt 1800 ]; do
  shown=$(inside python -m tl_core show "$run_id" --json 2>/dev/null | tail -1) || shown=
  status=$(echo "$shown" | json_get 'd["status"]' 2>/dev/null || echo unknown)
  case "$status" in completed|failed|cancelled) break ;; esac
  kill -0 "$cpid" 2>/dev/null || { tail -40 "$LOG" >&2; fail "the container stopped while run $run_id was $status"; }
  sleep 10
done
run_s=$(since "$t")
inside python -m tl_core logs "$run_id" --tail 8 >&2 || true
[ "$status" = completed ] || fail "run $run_id ended $status: $(echo "$shown" | json_get 'd["error"]' 2>/dev/null)"
acc=$(echo "$shown" | json_get 'round(d["best_val_acc"], 3)')
loader=$(echo "$shown" | json_get '"{workers} of {asked_workers} DataLoader workers, prefetch {prefetch_factor}, {shm_free_mb:.0f} MB free in /dev/shm".format(**d["summary"]["loader"])')
run_dir=$(echo "$shown" | json_get 'd["run_dir"]')
# The data check (cleanlab, scikit-learn, the pixel descriptors) inside the image, on the same folder.
t=$(date +%s)
checked=$(inside python -m tl_core check-data --data "$IN/demo-data/animals" --json | tail -1) \
  || fail "check-data failed inside the image: $checked"
check=$(echo "$checked" | json_get '"{} images, {} likely label errors, {} groups of duplicates".format(d["images"], d["found"]["label_issues"], d["found"]["duplicates"])')
check_s=$(since "$t")
t=$(date +%s)
say "run $run_id completed, the data checked; stopping the container as docker stop does (SIGTERM to its init)"
stop_it
stop_s=$(since "$t")
[ "$code" = 0 ] || { tail -20 "$LOG" >&2; fail "the container exited $code on SIGTERM"; }
ckpt=$STATE${run_dir#"$IN"}/last.pt
[ -s "$ckpt" ] && [ -s "$(dirname "$ckpt")/best.pt" ] || fail "the run's checkpoint is gone after the stop: $ckpt"
echo "check-image: OK: $IMAGE ($ENGINE, $image_size) built in ${build_s} s; entrypoint with /dev/shm $SHM and a password healthy in ${health_s} s; run $run_id queued by the CLI inside completed in ${run_s} s (val acc $acc; $loader); check-data inside in ${check_s} s ($check); stopped by SIGTERM in ${stop_s} s, exit 0, checkpoint kept ($(du -h "$ckpt" | cut -f1) ${ckpt#"$WORK"/}); $(since "$started") s in all"
