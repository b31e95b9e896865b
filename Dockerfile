# popgate container image.
#
#   docker build -t popgate .
#   docker run -d --name popgate -p 110:110 -p 995:995 \
#     -v /srv/popgate/config.yaml:/etc/popgate/config.yaml:ro \
#     -v popgate-data:/var/lib/popgate popgate
#
# The binary is static (CGO_ENABLED=0) and runs as the unprivileged user
# nonroot (65532). It binds ports 110 and 995 without any capability:
# Docker (20.10 and later) sets net.ipv4.ip_unprivileged_port_start=0 inside
# containers, so any user may bind low ports there. Elsewhere set that sysctl
# yourself: `docker run --sysctl net.ipv4.ip_unprivileged_port_start=0`, or in
# Kubernetes `securityContext.sysctls: [{name:
# net.ipv4.ip_unprivileged_port_start, value: "0"}]` (a safe sysctl). No file
# capability is set on purpose: a binary with one cannot even start under
# `--cap-drop ALL`.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=""
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/popgate ./cmd/popgate \
 && mkdir -p /out/var/lib/popgate/acme && chown -R 65532:65532 /out/var/lib/popgate

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/popgate /usr/local/bin/popgate
COPY --from=build --chown=65532:65532 /out/var/lib/popgate /var/lib/popgate
COPY config.example.yaml /etc/popgate/config.example.yaml
USER 65532:65532
# ACME account keys and certificates (tls.acme.storage default /var/lib/popgate/acme).
VOLUME ["/var/lib/popgate"]
EXPOSE 110 995
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/popgate"]
CMD ["serve", "--config", "/etc/popgate/config.yaml"]
