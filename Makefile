# make run    runs a node on the built-in example layout.
# make test   installs the Debian packages and the Ollama server the tests
#             need (when missing), then vets and runs every test with the
#             race detector.
# make cover  runs the same tests with coverage, counting the processes the
#             tests start too, and prints each package's figure.
# make image  builds the Docker images troupe and troupe-example (or
#             IMAGE=name and name-example) from a static binary, pulling
#             nothing.

# opencc: the reference converter the OpenCC tests compare against.
# manpages-zh, gettext and the packages with zh_CN/zh_TW catalogues (git,
# iso-codes, libc-l10n, libglib2.0-data, wget): the real Chinese text those
# tests build their corpus from (msgunfmt reads the catalogues); listed so
# the corpus is the same on every machine.
# prometheus: the server the metrics test scrapes a node with.
# util-linux: taskset, which pins the load benchmark's processes to cores.
# iproute2: ss, which the listening-address test reads sockets with.
# gcc, g++: cgo, to build Ollama (below).
# graphviz: dot, which the layout graph test checks its DOT output with.
# chromium: the headless browser the status page test renders the page with.
# tcpdump: captures the node-to-node link, to show a locked one carries no
# plaintext.
DEBIAN_PACKAGES := opencc manpages-zh gettext git iso-codes libc-l10n libglib2.0-data wget prometheus util-linux iproute2 gcc g++ graphviz tcpdump chromium

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test cover deps ollama vet build proto bench image

run:
	go run ./cmd/troupe

build:
	go build -o bin/troupe ./cmd/troupe

deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# ollama: the inference server internal/ollamatest runs for the tests that
# need a real one, installed with go install when missing. It is built from
# source (llama.cpp through cgo, CPU only, gcc and g++): several minutes the
# first time.
ollama: deps
	@test -x "$$(go env GOPATH | cut -d: -f1)/bin/ollama" || { \
		echo "installing ollama v0.6.5 with go install: this takes several minutes the first time"; \
		CGO_ENABLED=1 go install github.com/ollama/ollama@v0.6.5; \
	}

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	go vet ./...

test: deps ollama vet
	go test -race ./...

# cover runs the tests of make test (without the race detector, for time)
# and counts what every process ran: the test binaries write their counters
# into $(COVERDIR)/unit (-test.gocoverdir), the binaries the tests start as
# processes of their own into $(COVERDIR)/procs (TROUPE_COVERDIR: see
# internal/covertest). It prints each package's coverage by the test
# binaries alone and with the processes merged in, writes the merged
# profile to coverage.out and coverage.html, and fails after the report
# when a test failed.
MODULE := github.com/troupe-llm/troupe
COVERDIR := $(CURDIR)/.cover
cover: deps ollama
	@rm -rf $(COVERDIR)/unit $(COVERDIR)/procs && mkdir -p $(COVERDIR)/unit $(COVERDIR)/procs
	TROUPE_COVERDIR=$(COVERDIR)/procs go test -cover -coverpkg=$(MODULE)/... ./... -args -test.gocoverdir=$(COVERDIR)/unit; \
		echo $$? > $(COVERDIR)/status
	@go tool covdata percent -i=$(COVERDIR)/unit > $(COVERDIR)/unit.txt
	@go tool covdata percent -i=$(COVERDIR)/unit,$(COVERDIR)/procs > $(COVERDIR)/merged.txt
	@go tool covdata textfmt -i=$(COVERDIR)/unit -o $(COVERDIR)/unit.out
	@go tool covdata textfmt -i=$(COVERDIR)/unit,$(COVERDIR)/procs -o coverage.out
	@go tool cover -html=coverage.out -o coverage.html
	@echo; printf '%-32s %12s %8s\n' package "tests alone" merged
	@awk 'NR == FNR { alone[$$1] = $$3; next } \
		{ p = $$1; sub("^$(MODULE)/?", "", p); printf "%-32s %12s %8s\n", (p == "" ? "." : p), ($$1 in alone ? alone[$$1] : "-"), $$3 }' \
		$(COVERDIR)/unit.txt $(COVERDIR)/merged.txt
	@printf '%-32s %12s %8s\n' total \
		"$$(go tool cover -func=$(COVERDIR)/unit.out | awk 'END { print $$3 }')" \
		"$$(go tool cover -func=coverage.out | awk 'END { print $$3 }')"
	@echo; echo "merged profile: coverage.out, coverage.html"
	@exit $$(cat $(COVERDIR)/status)

# image builds the static binary and copies the host's CA bundle into
# $(IMAGE_CONTEXT)/dist/image, then the two images. Nothing is pulled: the
# Dockerfile starts FROM scratch, the example FROM the image just built.
IMAGE ?= troupe
EXAMPLE_IMAGE ?= $(IMAGE)-example
IMAGE_CONTEXT ?= .
image:
	@mkdir -p $(IMAGE_CONTEXT)/dist/image
	CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o $(IMAGE_CONTEXT)/dist/image/troupe ./cmd/troupe
	cp /etc/ssl/certs/ca-certificates.crt $(IMAGE_CONTEXT)/dist/image/ca-certificates.crt
	docker build -q -t $(IMAGE) -f Dockerfile $(IMAGE_CONTEXT)
	docker build -q -t $(EXAMPLE_IMAGE) --build-arg BASE=$(IMAGE) examples/image
	@docker image inspect -f '{{.Size}}' $(IMAGE) | awk '{printf "$(IMAGE): %.1f MB\n", $$1/1e6}'

# proto regenerates actors/troupe.pb.go (needs protoc and protoc-gen-go).
proto:
	go generate ./actors

bench:
	go test -run '^$$' -bench . -benchmem ./...
