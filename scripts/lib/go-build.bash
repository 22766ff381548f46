# Sourced by scripts/helm and scripts/promql: go_build builds a Go command of a module under
# tests/ once into TARGET/NAME/NAME (TARGET as scripts/kube-env: $CARGO_TARGET_DIR, relative to
# the checkout, else target/), reusing Go's module and build caches, and skips the build when
# a stamp of the Go version, the module's files and its sources says nothing changed.
#
#   go_build NAME PACKAGE [LDFLAGS]
#                           tests/NAME is the module; PACKAGE the command in it (`.`, or a
#                           dependency's command named by a `tool` line of its go.mod);
#                           LDFLAGS are added to the link's (e.g. -X for a version)
# Sets BIN to the binary. Fails loudly (BUILD FAILED) when it cannot build.

GO_BUILD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"

go_build() {
    local name="$1" package="$2" ldflags="-s -w ${3:-}" module target out stamp start
    module="$GO_BUILD_ROOT/tests/$name"
    target="${CARGO_TARGET_DIR:-target}"
    [[ "$target" == /* ]] || target="$GO_BUILD_ROOT/$target"
    out="$target/$name"
    BIN="$out/$name"
    command -v go >/dev/null || { echo "$name: BUILD FAILED: go is not installed" >&2; return 1; }
    stamp="$(cd "$module" && { go version; echo "$package $ldflags"; find . -name '*.go' -print0 | sort -z | xargs -0 -r cat; cat go.mod go.sum; } | sha256sum)"
    if [[ -x "$BIN" && "$(cat "$BIN.stamp" 2>/dev/null)" == "$stamp" ]]; then
        return 0
    fi
    mkdir -p "$out"
    echo "$name: building tests/$name ($package) into $BIN" >&2
    start=$SECONDS
    # -s -w: no symbol table or DWARF (a faster link with less memory); nice: keep the rest of
    # the machine responsive during a cold build.
    if ! (cd "$module" && nice -n 15 go build -ldflags "$ldflags" -o "$BIN.tmp" "$package"); then
        echo "$name: BUILD FAILED: go build in tests/$name failed (see the errors above)" >&2
        return 1
    fi
    mv -f "$BIN.tmp" "$BIN"
    echo "$stamp" >"$BIN.stamp"
    echo "$name: built in $((SECONDS - start))s" >&2
}
