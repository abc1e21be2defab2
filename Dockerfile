# syntax=docker/dockerfile:1

# Build stage: install warmproxy and its dependencies into a virtualenv that the
# runtime stage copies whole, so the runtime image carries no pip cache or
# build leftovers.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . .
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install . \
    && /opt/venv/bin/pip uninstall --yes pip setuptools


FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed numeric uid, so orchestrators can check runAsNonRoot without a
# passwd lookup.
RUN groupadd --system --gid 10001 warmproxy \
    && useradd --system --uid 10001 --gid warmproxy --home-dir /var/lib/warmproxy \
        --create-home --shell /usr/sbin/nologin warmproxy

COPY --from=build /opt/venv /opt/venv

# The working directory is the one place the proxy may write (persisted
# schedule, state); everything else stays read-only to it.
WORKDIR /var/lib/warmproxy
USER 10001:10001

# 8080: the proxy.  8081: control API, metrics and health, bound to loopback by
# the default command; publish it only after binding it elsewhere and setting
# a control token.
EXPOSE 8080 8081

# slim has no curl; the interpreter is enough.  An explicit empty ProxyHandler
# keeps an HTTP(S)_PROXY in the environment from routing the check elsewhere.
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8081/healthz', timeout=3); sys.exit(0 if r.status == 200 else 1)"]

# The image's defaults live in a config file, the lowest-ranked source, not in
# CMD flags (a flag beats every WARMPROXY_* variable and config file, so
# `-e WARMPROXY_PROXY__LISTEN=...` would be ignored without a word) nor in ENV
# lines (a variable beats a config file, so a mounted file's listen would be
# ignored).  Precedence, highest first: flags, WARMPROXY_* variables, the
# config file (--config, else $WARMPROXY_CONFIG: this one unless replaced),
# built-in defaults.
COPY <<'EOF' /etc/warmproxy/container.toml
# warmproxy's defaults in this image; any WARMPROXY_<SECTION>__<KEY> overrides them.
[proxy]
listen = "0.0.0.0:8080"

[control]
# Loopback: the health check reaches it, nothing outside the container does.
listen = "127.0.0.1:8081"
EOF
ENV WARMPROXY_CONFIG=/etc/warmproxy/container.toml

# The origin comes from WARMPROXY_PROXY__ORIGIN (any key: WARMPROXY_<SECTION>__<KEY>), e.g.
#   docker run -e WARMPROXY_PROXY__ORIGIN=http://app:8000 -p 8080:8080 warmproxy
ENTRYPOINT ["warmproxy"]
CMD ["serve"]
