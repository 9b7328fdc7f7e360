# The replayops image: controller, webhook, capture sidecar and the init container (`replayops iptables`).
# Build it anywhere with `docker build .`; `replayops dev image` builds this same file with buildah on a
# local Debian base (BASE) made by debootstrap, see controller/devcluster/image.py. Behind a TLS-inspecting
# proxy give pip the CA bundle: `docker build --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt .`
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
# apt only for what the base lacks: a base that has the packages needs no network here.
RUN set -eu; missing=""; for p in python3 python3-venv ca-certificates; do \
      dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done; \
    if [ -n "$missing" ]; then \
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing; \
      rm -rf /var/lib/apt/lists/*; fi
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# pip lives in a venv of its own; the runtime venv /opt/replayops gets only what replayops needs.
RUN python3 -m venv /opt/pip && python3 -m venv --without-pip /opt/replayops
WORKDIR /src
# The dependencies first (a layer only pyproject.toml changes; their test suites dropped), then the project's wheel.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip-ca set -eu; \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt; \
    /opt/pip/bin/pip --python /opt/replayops/bin/python install -q -r /tmp/requirements.txt; \
    find /opt/replayops/lib -depth -type d -name tests -exec rm -rf {} +; rm -f /opt/replayops/bin/Activate.ps1
COPY README.md ./
COPY controller ./controller
RUN --mount=type=secret,id=pip-ca set -eu; \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    /opt/pip/bin/pip wheel -q --no-deps -w /tmp/wheel . && \
    /opt/pip/bin/pip --python /opt/replayops/bin/python install -q --no-deps /tmp/wheel/*.whl && \
    /opt/pip/bin/pip --python /opt/replayops/bin/python check

FROM ${BASE}
# iptables: the init container; git, openssh-client: the inspector's working copy (commit, push over https or ssh)
RUN set -eu; missing=""; for p in python3 iptables ca-certificates git openssh-client; do \
      dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done; \
    if [ -n "$missing" ]; then \
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing; \
      rm -rf /var/lib/apt/lists/*; fi; \
    mkdir -p /var/lib/replayops && chown 65532:65532 /var/lib/replayops; \
    echo 'replayops:x:65532:65532:replayops:/tmp:/usr/sbin/nologin' >> /etc/passwd; \
    echo 'replayops:x:65532:' >> /etc/group  # ssh refuses a uid with no name
COPY --from=build /opt/replayops /opt/replayops
COPY crds /opt/replayops/share/crds
COPY manifests /opt/replayops/share/manifests
# the demo (make up runs it in pods) and the example GitOps repository
COPY examples /opt/replayops/share/examples
ENV REPLAYOPS_ROOT=/opt/replayops/share \
    REPLAYOPS_HOME=/var/lib/replayops \
    HOME=/var/lib/replayops \
    PATH=/opt/replayops/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 65532:65532
WORKDIR /var/lib/replayops
ENTRYPOINT ["/opt/replayops/bin/replayops"]
