# Sourced by scripts/setup-<tool>.sh: obtains ONE pinned Go program, built from the Go module proxy
# into a cache outside the repository, and prints its path as the LAST line of stdout. No prebuilt
# binary can be downloaded on these machines, hence the builds.
#
# The caller sets, then calls go_tool_main:
#   TOOL          the binary's name (and the cache folder's: <cache root>/<TOOL>-<TOOL_VERSION>/)
#   TOOL_VERSION  the pinned version, without the leading v
#   TOOL_MODULE   the Go module, TOOL_PACKAGE the main package inside it (. for the module root)
#   TOOL_ENV      the variable that may name a binary to use instead (e.g. LETHE_HELM)
#   GO_MIN        the oldest Go that builds it
# and may set TOOL_LDFLAGS (after -s -w), TOOL_STAMP_EXTRA (recorded in the stamp), and define
# tool_prepare (runs before the build with $tool_gomod, the module's go.mod, e.g. to compute
# TOOL_LDFLAGS) and tool_check (runs after it with the binary's path; fails on a wrong binary).
#
# Order of preference: $TOOL_ENV when it is an executable; the cache
# ${<cache var>:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe/tools}/<TOOL>-<TOOL_VERSION>/<TOOL> when its
# stamp matches the pins; a build into that cache with the user's Go caches. The build downloads
# the module (`go mod download`) and builds inside it with its own go.mod and go.sum, as
# `go install module@version` would, but without asking the proxy for the module's version list
# (which it refuses for some modules). Progress goes to stderr; stdout carries only the path.

log() { printf '%s: %s\n' "$(basename "$0" .sh)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# $1: the variable naming the cache root (e.g. LETHE_HELM_CACHE); default LETHE_TOOLS_CACHE.
go_tool_main() {
  local cache_var="${1:-LETHE_TOOLS_CACHE}"
  local override="${!TOOL_ENV:-}"
  if [ -n "$override" ]; then
    if [ -x "$override" ]; then
      log "using $TOOL_ENV=$override"
      printf '%s\n' "$override"
      exit 0
    fi
    log "$TOOL_ENV=$override is not an executable: using the cache instead"
  fi

  local cache_root="${!cache_var:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe/tools}"
  local dest="$cache_root/$TOOL-$TOOL_VERSION"
  local bin="$dest/$TOOL"
  # The stamp records how the binary was built; a binary without it (or from other pins) is rebuilt.
  local stamp_file="$dest/.stamp"
  if go_tool_is_complete "$bin" "$stamp_file"; then
    log "cached: $bin"
    printf '%s\n' "$bin"
    exit 0
  fi

  command -v go >/dev/null 2>&1 ||
    die "Go is not installed (need go >= $GO_MIN to build $TOOL v$TOOL_VERSION from the Go module proxy): install Go, or set $TOOL_ENV to a $TOOL binary"
  local go_version
  go_version="$(go env GOVERSION)"
  if ! printf '%s\n%s\n' "$GO_MIN" "${go_version#go}" | sort -V -C; then
    die "$go_version is too old: $TOOL v$TOOL_VERSION needs go >= $GO_MIN"
  fi

  mkdir -p "$cache_root"
  # Absolute: the build runs in the module's folder (go build -C).
  cache_root="$(cd "$cache_root" && pwd)"
  dest="$cache_root/$TOOL-$TOOL_VERSION"
  bin="$dest/$TOOL"
  stamp_file="$dest/.stamp"
  # One build at a time per tool and cache root; a second caller waits, then finds the cache complete.
  exec 9>"$cache_root/.$TOOL.lock"
  if command -v flock >/dev/null 2>&1; then
    flock -w 1200 9 || die "timed out waiting for another build of $TOOL to finish"
    if go_tool_is_complete "$bin" "$stamp_file"; then
      log "cached (built by another run): $bin"
      printf '%s\n' "$bin"
      exit 0
    fi
  fi

  export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0 GO111MODULE=on GOWORK=off
  local started=$SECONDS
  mkdir -p "$dest"
  rm -f "$stamp_file"
  local info tool_dir
  info="$(go mod download -json "$TOOL_MODULE@v$TOOL_VERSION")" ||
    die "the Go module proxy did not serve $TOOL_MODULE@v$TOOL_VERSION (GOPROXY=$(go env GOPROXY))"
  tool_dir="$(printf '%s\n' "$info" | sed -nE 's/^[[:space:]]*"Dir": "(.*)",?$/\1/p')"
  tool_gomod="$(printf '%s\n' "$info" | sed -nE 's/^[[:space:]]*"GoMod": "(.*)",?$/\1/p')"
  { [ -n "$tool_dir" ] && [ -d "$tool_dir" ]; } || die "go mod download gave no source folder for $TOOL_MODULE@v$TOOL_VERSION"
  if declare -F tool_prepare >/dev/null; then tool_prepare; fi
  log "go build $TOOL_MODULE@v$TOOL_VERSION ($TOOL_PACKAGE)"
  go build -C "$tool_dir" -trimpath -ldflags="-s -w ${TOOL_LDFLAGS:-}" -o "$bin" "$TOOL_PACKAGE" >&2 ||
    die "the build of $TOOL v$TOOL_VERSION failed (GOPROXY=$(go env GOPROXY))"
  if declare -F tool_check >/dev/null; then tool_check "$bin"; fi
  printf '%s=v%s %s\n' "$TOOL" "$TOOL_VERSION" "${TOOL_STAMP_EXTRA:-go=$go_version}" >"$stamp_file"
  log "built in $((SECONDS - started)) s: $bin"
  printf '%s\n' "$bin"
}

go_tool_is_complete() { [ -x "$1" ] && [ -f "$2" ] && grep -q "^$TOOL=v$TOOL_VERSION " "$2"; }
