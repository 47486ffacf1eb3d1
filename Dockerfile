# kiln — multi-stage image on Debian 12.
#
#   docker build -t kiln .
#   docker run -p 8080:8080 -v kiln-state:/var/lib/kiln -v /path/to/data:/data:ro kiln
#   docker exec <container> kilnd token create --team ops --admin
#
# Both stages install their packages with deploy/install-deps.sh from
# deploy/packages.txt — the list `make deps` uses — so the image cannot drift
# from a developer machine (tests/test_deploy.sh checks this file for it).

# ---- build: `make deps` (build section only) + `make` -----------------------
FROM debian:12 AS build
WORKDIR /src
COPY deploy/packages.txt deploy/install-deps.sh deploy/
RUN KILN_DEPS=build deploy/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN KILN_DEPS=build make deps && make -j"$(nproc)" build/kilnd build/kiln

# ---- runtime: shared libraries only, non-root ------------------------------
FROM debian:12 AS runtime
COPY deploy/packages.txt deploy/install-deps.sh /tmp/deploy/
RUN /tmp/deploy/install-deps.sh runtime && rm -rf /var/lib/apt/lists/* /tmp/deploy \
 && useradd --system --uid 10001 --home-dir /var/lib/kiln --shell /usr/sbin/nologin kiln \
 && mkdir -p /var/lib/kiln /data && chown kiln:kiln /var/lib/kiln
COPY --from=build /src/build/kilnd /src/build/kiln /usr/local/bin/
COPY --from=build /src/static /usr/local/share/kiln/static
COPY deploy/kilnd.env /etc/kiln/kilnd.env

ENV KILND_STATE=/var/lib/kiln \
    KILN_DATA=/data \
    KILND_LISTEN=0.0.0.0:8080 \
    KILND_WORKERS=1 \
    KILND_MAX_UPLOAD=268435456
USER kiln
WORKDIR /var/lib/kiln
VOLUME /var/lib/kiln
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/v1/health || exit 1
CMD ["sh", "-c", "exec kilnd --listen \"$KILND_LISTEN\" --workers \"$KILND_WORKERS\" --max-upload \"$KILND_MAX_UPLOAD\""]
