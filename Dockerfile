# syntax=docker/dockerfile:1
#
# Training image: ftharness is PID 1 and supervises the training command.
#
#   docker build -t ftharness-train .
#   docker run --stop-timeout 30 -v ftharness-backups:/backups ftharness-train
#
# Supervisor options come from FTHARNESS_* variables (`docker run -e ...`);
# arguments after the image name replace the training command (CMD).

# Pinned to a patch release so rebuilds are reproducible; pin the digest too
# (python:3.11.14-slim-bookworm@sha256:...) where the registry is reachable.
FROM python:3.11.14-slim-bookworm

# PYTHONUNBUFFERED: the last log lines before a preemption must reach
# `docker logs` / `kubectl logs` rather than die in a buffer.
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# A virtualenv keeps the job's packages apart from the base image's Python.
RUN python -m venv /opt/venv

WORKDIR /app

# Dependencies first, read from pyproject.toml alone: editing the code (or the
# README) does not reinstall TensorFlow, the largest layer by far.
COPY pyproject.toml ./
RUN python -c 'import tomllib; \
project = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extras = project["optional-dependencies"]; \
print(*project["dependencies"], *extras["tensorflow"], *extras["gcs"], *extras["s3"], sep="\n")' \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code (.dockerignore keeps tests, deploy files and the git history out).
# Its dependencies are already in the layer above, hence --no-deps.
COPY . .
RUN pip install --no-cache-dir --no-deps .

# A fixed numeric UID lets Kubernetes verify runAsNonRoot; the checkpoint
# directories belong to it so that named volumes start out writable.
RUN useradd --no-log-init --create-home --uid 10001 --user-group ftharness \
    && mkdir -p /backups /var/cache/ftharness \
    && chown ftharness:ftharness /backups /var/cache/ftharness
USER 10001:10001

# /backups: the durable tier when no remote URL is given (mount a volume).
# /var/cache/ftharness: the local tier; a volume keeps checkpoint writes off
# the overlay filesystem, and losing it costs only a re-download.
ENV FTHARNESS_BACKUP_DIR=/backups \
    FTHARNESS_LOCAL_DIR=/var/cache/ftharness
VOLUME ["/backups", "/var/cache/ftharness"]

# `docker stop` and the kubelet send SIGTERM; ftharness turns it into a final
# checkpoint and exits 143. Exec form keeps ftharness PID 1 (no shell between
# it and the signal), and it reaps orphans itself, so no init is added.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ftharness", "supervise", "--"]
CMD ["python", "examples/train.py"]
