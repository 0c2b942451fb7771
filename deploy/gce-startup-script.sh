#!/usr/bin/env bash
# Compute Engine startup script: train with ftharness on a Spot VM.
#
# Compute Engine runs startup scripts as root at every boot, so a Spot VM that
# was preempted (stopped) and started again picks the run up where it stopped:
# the checkpoints live in the bucket, not on the VM.
#
#   gcloud compute instances create trainer-1 --zone=ZONE \
#     --provisioning-model=SPOT --instance-termination-action=STOP \
#     --service-account=TRAINER@PROJECT.iam.gserviceaccount.com --scopes=cloud-platform \
#     --metadata-from-file=startup-script=deploy/gce-startup-script.sh \
#     --metadata=ftharness-image=REGION-docker.pkg.dev/PROJECT/REPO/ftharness-train:0.1.0,ftharness-backup-dir=gs://BUCKET/runs/run-1
#
# The VM's service account needs read access to the image and read/write
# access to the bucket. FTHARNESS_IMAGE / FTHARNESS_BACKUP_DIR in the
# environment override the metadata (handy when running this by hand), and
# GCE_METADATA_HOST the metadata server's address (as for google-auth).
set -euo pipefail

readonly CONTAINER=ftharness-train
# Compute Engine powers a preempted VM off 30 s after its soft-off signal:
# Docker gets 30 s (--stop-timeout) from SIGTERM to SIGKILL, and ftharness
# plans to be done 10 s before that so the guest OS can finish shutting down.
readonly GRACE_PERIOD=30
readonly GRACE_MARGIN=10
# Docker config (registry credentials) somewhere writable: /root is read-only
# on Container-Optimized OS.
export DOCKER_CONFIG=/var/lib/ftharness/docker-config

log() { echo "ftharness-startup: $*" >&2; }

metadata_attribute() {
  curl --fail --silent --show-error --retry 5 --retry-connrefused \
    --header 'Metadata-Flavor: Google' \
    "http://${GCE_METADATA_HOST:-metadata.google.internal}/computeMetadata/v1/instance/attributes/$1" ||
    { log "instance metadata attribute '$1' is not set"; return 1; }
}

install_docker() {
  if command -v docker >/dev/null; then
    return # Container-Optimized OS ships it
  fi
  log "installing Docker"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
  systemctl enable --now docker
}

# Artifact Registry and Container Registry accept the VM's service account.
configure_registry() {
  local registry="${IMAGE%%/*}"
  case "$registry" in
    *-docker.pkg.dev | gcr.io | *.gcr.io) ;;
    *) return 0 ;;
  esac
  if command -v docker-credential-gcr >/dev/null; then # Container-Optimized OS
    docker-credential-gcr configure-docker --registries="$registry"
  elif command -v gcloud >/dev/null; then
    gcloud auth configure-docker "$registry" --quiet
  fi
}

start_training() {
  local state
  if state=$(docker container inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$CONTAINER" 2>/dev/null); then
    # A boot after a preemption: keep the container, its volume and its
    # restart count; Docker itself may have started it already.
    case "$state" in
      running* | restarting*) log "$CONTAINER is already running" ;;
      "exited 0") log "$CONTAINER finished training; nothing to do" ;;
      *)
        log "restarting $CONTAINER (was: $state)"
        docker start "$CONTAINER" >/dev/null
        ;;
    esac
    return
  fi
  log "starting $CONTAINER from $IMAGE, backups in $BACKUP_DIR"
  # --restart on-failure:5: a few retries if ftharness itself exits non-zero
  # (75: a previous run still holds the backup lease); ftharness retries the
  # training command on its own, and fatal codes must not loop forever.
  # docker stop's SIGTERM (exit 143) is never restarted by Docker.
  docker run --detach --name "$CONTAINER" \
    --restart on-failure:5 \
    --stop-timeout "$GRACE_PERIOD" \
    --volume ftharness-local:/var/cache/ftharness \
    --env FTHARNESS_BACKUP_DIR="$BACKUP_DIR" \
    --env FTHARNESS_GRACE_PERIOD="$GRACE_PERIOD" \
    --env FTHARNESS_GRACE_MARGIN="$GRACE_MARGIN" \
    --env FTHARNESS_PREEMPTION_NOTICE=gce \
    --env FTHARNESS_LOG_FORMAT=json \
    "$IMAGE" >/dev/null
}

IMAGE="${FTHARNESS_IMAGE:-$(metadata_attribute ftharness-image)}"
BACKUP_DIR="${FTHARNESS_BACKUP_DIR:-$(metadata_attribute ftharness-backup-dir)}"
readonly IMAGE BACKUP_DIR

install_docker
configure_registry
start_training
