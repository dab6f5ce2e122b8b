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
# redis-server (the Redis Streams queue), clickhouse-server 18.16 (the ClickHouse
# store) and zookeeper (with Java; the two-shard ClickHouse cluster test); and chDB from PyPI, an embedded current ClickHouse the schema is checked
# against. The tests only need the binaries; a system service the packages start is
# stopped again (the tests use their own ports and data directories).
ensure_test_services() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v clickhouse-server >/dev/null || missing+=(clickhouse-server)
    { [ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null; } || missing+=(zookeeper)
    if [ ${#missing[@]} -gt 0 ]; then
        $sudo apt-get update -q
        $sudo apt-get install -y -q "${missing[@]}"
        for service in "${missing[@]}"; do
            $sudo systemctl stop "$service" 2>/dev/null || $sudo service "$service" stop 2>/dev/null || true
        done
    fi
    if ! python3 -c 'import chdb' 2>/dev/null; then
        python3 -m pip install -q 'chdb==4.4.0'
    fi
}

# Starts Debian's clickhouse-server on loopback with its data in DIR (benchmarks; the
# Rust tests use tally-testkit) and waits until it answers. Prints its PID.
#   start_clickhouse DIR HTTP_PORT NATIVE_PORT
start_clickhouse() {
    local dir=$1 http=$2 tcp=$3
    mkdir -p "$dir"
    cat > "$dir/config.xml" <<XML
<yandex>
  <logger><level>warning</level><log>$dir/server.log</log><errorlog>$dir/error.log</errorlog></logger>
  <http_port>$http</http_port><tcp_port>$tcp</tcp_port><listen_host>127.0.0.1</listen_host>
  <path>$dir/data/</path><tmp_path>$dir/tmp/</tmp_path>
  <users_config>/etc/clickhouse-server/users.xml</users_config>
  <default_profile>default</default_profile><default_database>default</default_database>
  <mark_cache_size>536870912</mark_cache_size>
</yandex>
XML
    clickhouse-server --config-file="$dir/config.xml" >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 300); do curl -sf "http://127.0.0.1:$http/ping" >/dev/null && break; sleep 0.1; done
    if ! curl -sf "http://127.0.0.1:$http/ping" >/dev/null; then
        echo "clickhouse-server did not start" >&2
        cat "$dir/error.log" >&2
        return 1
    fi
    echo "$pid"
}

# The benchmark dataset's shape, unless the caller set it: 10M events, 100k users, 1k
# accounts, 90 days, seed 42, kept in /var/cache/tally-bench.
bench_dataset_defaults() {
    EVENTS=${EVENTS:-10000000}
    USERS=${USERS:-100000}
    ACCOUNTS=${ACCOUNTS:-1000}
    DAYS=${DAYS:-90}
    SEED=${SEED:-42}
    BENCH_DATA=${BENCH_DATA:-/var/cache/tally-bench}
}

# The query benchmarks' dataset (bench/src/bin/gen_events.rs) in $BENCH_DATA, made once
# per EVENTS USERS ACCOUNTS DAYS SEED and made again when the generator, the event model
# or the store changes (the rows go through the store's own insert path). Prints its path.
#   db=$(bench_dataset BIN_DIR)
bench_dataset() {
    local bin=$1 label db stamp
    if (( EVENTS % 1000000 == 0 )); then label="$(( EVENTS / 1000000 ))m"; else label=$EVENTS; fi
    db="$BENCH_DATA/events-$label.duckdb"
    local flags=(--events "$EVENTS" --users "$USERS" --accounts "$ACCOUNTS" --days "$DAYS" --seed "$SEED")
    local sources
    mapfile -t sources < <(find bench/src/bin/gen_events.rs crates/model/src crates/store/src -type f | sort)
    stamp="${flags[*]} sources=$(cat "${sources[@]}" | sha256sum | cut -c1-16)"
    if [[ ! -f "$db" || "$(cat "$db.params" 2>/dev/null)" != "$stamp" ]]; then
        mkdir -p "$BENCH_DATA"
        rm -f "$db" "$db.wal" "$db.params"
        echo "generating $db" >&2
        "$bin/gen_events" "${flags[@]}" --out "$db" >&2
        echo "$stamp" > "$db.params"
    fi
    echo "$db"
}

# A TCP port free on loopback right now (the benchmarks' servers listen on it).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
