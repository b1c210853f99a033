# The operator's image: dependencies pinned with hashes (deploy/requirements.lock), runs as a non-root user,
# writes nothing to its filesystem (readOnlyRootFilesystem works), no compilers in the final stage.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY deploy/requirements.lock ./
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY operator ./operator
# pip and setuptools came with the venv and are not needed to run: they leave it (25 MB) before it is compiled
# once and copied.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
 && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
 && /opt/venv/bin/python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="alb-membership-operator" \
      org.opencontainers.image.description="Takes terminating pods out of Alibaba Cloud ALB server groups at once" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["alb-membership-operator", "run"]
