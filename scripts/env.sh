# Shared by the scripts: where builds go and what a fresh machine must install.
# The build folder lives outside the checkout so every clone reuses the (slow) DuckDB
# build; override with CARGO_TARGET_DIR.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/tally-target}"
mkdir -p "$CARGO_TARGET_DIR" 2>/dev/null || export CARGO_TARGET_DIR="$PWD/target"

ensure_build_deps() {
    if ! command -v cargo >/dev/null; then
        echo "tally needs a Rust toolchain (cargo 1.85 or newer): https://rustup.rs" >&2
        exit 1
    fi
    # The bundled DuckDB needs a C++ compiler.
    if ! command -v g++ >/dev/null || ! command -v make >/dev/null; then
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -q
        $sudo apt-get install -y -q g++ make pkg-config
    fi
}

# Servers the integration tests start themselves, on loopback, from Debian's packages:
# redis-server for the Redis Streams queue. The tests only need the binary; Debian's
# package also starts a system service on 6379, which is stopped again (the tests use
# their own ports and data directories).
ensure_test_services() {
    if ! command -v redis-server >/dev/null; then
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -q
        $sudo apt-get install -y -q redis-server
        $sudo systemctl stop redis-server 2>/dev/null || $sudo service redis-server stop 2>/dev/null || true
    fi
}
