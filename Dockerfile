# syntax=docker/dockerfile:1
#
# The insights service: one static binary (serve | trigger | status | demo |
# healthcheck) on a distroless base that runs as a non-root user.
#
#   docker build -t bmsview/insights .
#   docker run --rm -p 8080:8080 bmsview/insights            # embedded stores
#   docker compose up -d                                     # see docs/deploy.md
#
# CGO is off: the embedded FerretDB uses the pure-Go SQLite (modernc.org),
# so the binary needs no libc and runs on distroless/static.

ARG GO_VERSION=1.26

############################ build ############################
FROM golang:${GO_VERSION} AS build
WORKDIR /src

# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download

COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=linux \
    go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /insights ./cmd/insights

# The data directory of the embedded FerretDB (used only when MONGODB_URI is
# unset), owned by the distroless nonroot user (uid/gid 65532).
RUN mkdir -p /out/data && chown -R 65532:65532 /out/data

############################ run ############################
FROM gcr.io/distroless/static-debian12:nonroot AS run
# CA certificates (for rediss://, mongodb+srv:// with TLS, Gemini) and
# tzdata ship in distroless/static.
COPY --from=build /insights /insights
COPY --from=build --chown=65532:65532 /out/data /data

ENV HTTP_ADDR=:8080 \
    DATA_DIR=/data
WORKDIR /data
VOLUME ["/data"]
USER 65532:65532
EXPOSE 8080

# The binary checks itself: `insights healthcheck` GETs
# http://127.0.0.1<HTTP_ADDR>/healthz and exits 0 on 200 (no shell or curl
# in a distroless image).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/insights", "healthcheck"]

# Compose and Kubernetes send SIGTERM; serve drains for SHUTDOWN_TIMEOUT
# (25s by default), so give containers a stop grace period above that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/insights"]
CMD ["serve"]
