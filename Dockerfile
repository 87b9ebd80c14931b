# The Troupe image: the static troupe binary and a CA bundle, nothing else
# (no shell, no package manager), run as an unprivileged user.
#
# Nothing is pulled and nothing is compiled here: `make image` builds the
# binary (CGO_ENABLED=0) and copies the host's CA bundle into dist/image/,
# then runs `docker build -t troupe .`, as Prometheus and goreleaser images
# are built. See docs/deployment.md.
FROM scratch

COPY dist/image/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY dist/image/troupe /troupe

# Every listener on every interface, so that `docker run -p 8123:8123 troupe`
# answers on the host's port. A node that is not told PUBLIC_ADDRESS then
# announces its container's IP to the Agent and to the other nodes.
ENV BIND_ADDRESS=0.0.0.0

# nobody:nogroup
USER 65534:65534

# HTTP (Agent API, OpenAI API, status page, /metrics); gossip (TCP and
# UDP); chats between nodes.
EXPOSE 8123/tcp 7946/tcp 7946/udp 7947/tcp

# Readiness, asked by the binary itself: there is no shell.
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 CMD ["/troupe", "health"]

ENTRYPOINT ["/troupe"]
