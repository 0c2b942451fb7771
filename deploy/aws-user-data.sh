#!/usr/bin/env bash
# EC2 user data: train with ftharness on a Spot Instance.
#
# Set IMAGE and BACKUP_DIR below, then launch, for example:
#
#   aws ec2 run-instances --image-id AMI_AL2023 --instance-type m7i.xlarge \
#     --instance-market-options 'MarketType=spot,SpotOptions={SpotInstanceType=persistent,InstanceInterruptionBehavior=stop}' \
#     --iam-instance-profile Name=ftharness-trainer \
#     --user-data file://deploy/aws-user-data.sh
#
# The instance profile needs ECR pull rights and s3:GetObject, PutObject,
# DeleteObject and ListBucket on the backup prefix. Checkpoints live in S3, so
# a replacement instance (or this one, started again) resumes the run.
set -euo pipefail

# ---- edit these two (or export FTHARNESS_IMAGE / FTHARNESS_BACKUP_DIR) ----
IMAGE="${FTHARNESS_IMAGE:-ACCOUNT.dkr.ecr.REGION.amazonaws.com/ftharness-train:0.1.0}"
BACKUP_DIR="${FTHARNESS_BACKUP_DIR:-s3://BUCKET/runs/run-1}"
readonly IMAGE BACKUP_DIR

readonly CONTAINER=ftharness-train
# EC2 posts a Spot interruption notice two minutes ahead, which ftharness
# reads (--preemption-notice aws) to checkpoint early; the SIGTERM of the
# shutdown then only has to finish the job. Docker gets 30 s (--stop-timeout)
# from SIGTERM to SIGKILL, the same as FTHARNESS_GRACE_PERIOD.
readonly GRACE_PERIOD=30
readonly GRACE_MARGIN=5
# cloud-init runs user data once per instance; a copy here runs at every boot.
readonly PER_BOOT_COPY=/var/lib/cloud/scripts/per-boot/ftharness.sh

log() { echo "ftharness-user-data: $*" >&2; }

check_settings() {
  case "$IMAGE $BACKUP_DIR" in
    *ACCOUNT* | *REGION* | *BUCKET*)
      log "set IMAGE and BACKUP_DIR at the top of this script first"
      return 64 # EX_USAGE, as ftharness itself
      ;;
    *) ;;
  esac
}

run_at_every_boot() {
  # Only when cloud-init is running us as user data, not when run by hand.
  if [[ "$0" == /var/lib/cloud/instance*/scripts/* && "$0" != "$PER_BOOT_COPY" ]]; then
    install -D -m 0700 "$0" "$PER_BOOT_COPY"
  fi
}

install_docker() {
  if command -v docker >/dev/null; then
    return
  fi
  log "installing Docker"
  if command -v dnf >/dev/null; then # Amazon Linux 2023
    dnf install -y -q docker
  else # Ubuntu, Debian
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
  fi
  systemctl enable --now docker
}

# ECR takes a short-lived password from the instance profile.
configure_registry() {
  local registry="${IMAGE%%/*}"
  case "$registry" in
    *.dkr.ecr.*.amazonaws.com) ;;
    *) return 0 ;;
  esac
  local region="${registry#*.dkr.ecr.}"
  region="${region%%.*}"
  aws ecr get-login-password --region "$region" |
    docker login --username AWS --password-stdin "$registry"
}

start_training() {
  local state
  if state=$(docker container inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$CONTAINER" 2>/dev/null); then
    # The instance was stopped by an interruption and started again: keep
    # the container, its volume and its restart count.
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
  # --network host: the instance metadata service (Spot notices, instance
  # profile credentials) answers IMDSv2 requests from a bridged container
  # only if the hop limit was raised to 2; on the host network it always does.
  # --restart on-failure:5: a few retries if ftharness itself exits non-zero
  # (75: a previous run still holds the backup lease); ftharness retries the
  # training command on its own, and fatal codes must not loop forever.
  docker run --detach --name "$CONTAINER" \
    --restart on-failure:5 \
    --stop-timeout "$GRACE_PERIOD" \
    --network host \
    --volume ftharness-local:/var/cache/ftharness \
    --env FTHARNESS_BACKUP_DIR="$BACKUP_DIR" \
    --env FTHARNESS_GRACE_PERIOD="$GRACE_PERIOD" \
    --env FTHARNESS_GRACE_MARGIN="$GRACE_MARGIN" \
    --env FTHARNESS_PREEMPTION_NOTICE=aws \
    --env FTHARNESS_LOG_FORMAT=json \
    "$IMAGE" >/dev/null
}

check_settings
run_at_every_boot
install_docker
configure_registry
start_training
