# The `hive` image: one image for spores and the nexus (`docker run IMAGE spore|nexus|health ...`).
#
# Build arguments:
#   HIVE_PLUGINS          plugin folders under plugins/ to install, space separated (e.g. "security_scan ota")
#   HIVE_EXTRA_PACKAGES   more pip requirements (your task modules' package, extra libraries), space separated
#   PYTHON_VERSION        the python:*-slim base, 3.11 or newer
#   VENV                  where the virtual environment lives (the same path in both stages)
#
#   docker build -t hive-framework --build-arg HIVE_PLUGINS="security_scan" .
#
# tests/test_deploy_dockerfile.py runs the build stage's steps on a machine without a container engine.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ARG VENV=/opt/hive
ARG HIVE_PLUGINS=""
ARG HIVE_EXTRA_PACKAGES=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hive_framework ./hive_framework
COPY plugins ./plugins
RUN python -m venv "$VENV"
# hive and the chosen plugins in one resolver run, so a plugin's "hive-framework" requirement is this source.
RUN set -e; targets="."; \
    for plugin in $HIVE_PLUGINS; do \
      test -f "plugins/$plugin/pyproject.toml" || { echo "no plugin folder plugins/$plugin" >&2; exit 1; }; \
      targets="$targets ./plugins/$plugin"; \
    done; \
    "$VENV/bin/pip" install $targets $HIVE_EXTRA_PACKAGES
RUN "$VENV/bin/hive" --version

FROM python:${PYTHON_VERSION}-slim AS runtime
ARG VENV=/opt/hive
RUN useradd --create-home --uid 10001 --user-group hive
COPY --from=build ${VENV} ${VENV}
ENV PATH="${VENV}/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    HIVE_STATE_DIR=/home/hive/state
USER 10001:10001
WORKDIR /home/hive
ENTRYPOINT ["hive"]
CMD ["spore"]
