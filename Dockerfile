# The presence service: `docker build -t presence .`, or through docker-compose.yml.

# Stage 1: the project's wheel, built with the locked build backend (requirements/build.txt,
# installed by hash), and every dependency's release file as the lock pins it, downloaded by
# hash: nothing is resolved here, so the image holds what the suite was run against.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements/build.txt requirements/service.txt requirements/
RUN pip install --require-hashes -r requirements/build.txt \
    && pip download --require-hashes --no-deps --dest /wheels -r requirements/service.txt
COPY pyproject.toml README.md ./
COPY presence ./presence
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# Stage 2: the wheels installed, by the lock's hashes and from nothing else; no build tools,
# a non-root user.
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY requirements/service.txt /tmp/service.txt
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-index --find-links=/tmp/wheels --require-hashes -r /tmp/service.txt \
    && pip install --no-index --no-deps /tmp/wheels/presence-*.whl \
    && rm -rf /tmp/wheels /tmp/service.txt \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin presence
USER presence
WORKDIR /tmp

# Listen on every interface of the container; the other settings come from the environment
# (docker-compose.yml passes them all).
ENV PRESENCE_HOST=0.0.0.0 PRESENCE_PORT=8080
EXPOSE 8080

# Healthy when GET /readyz answers 200 (Redis answers); no curl in the image.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/readyz' % os.environ.get('PRESENCE_PORT', '8080'); sys.exit(urllib.request.urlopen(url, timeout=3).status != 200)"]

# SIGTERM (docker stop) lets the service finish in-flight requests and exit.
STOPSIGNAL SIGTERM
CMD ["presence", "serve"]
