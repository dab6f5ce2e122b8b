//! Real servers for integration tests: `redis-server`, `clickhouse-server` and a
//! ZooKeeper-backed ClickHouse cluster (Debian's packages; scripts/test.sh installs them),
//! each on free loopback ports in its own temporary directory, stopped when dropped. [`ClickHouse::shared`] is one server for a
//! whole test binary, watched by a shell that stops it when the test process is gone.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("local address")
        .port()
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A `redis-server` with `appendonly yes` and `appendfsync always`: what it acknowledged
/// survives [`Redis::restart`].
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: scripts/test.sh installs it (apt-get install redis-server)");
        self.child = Some(child);
        let port = self.port;
        wait_until("redis-server", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Kills the server (SIGKILL); its data directory stays.
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three tries at starting a server: each failure is printed, the last one panics.
fn retry_start<T>(mut attempt: impl FnMut() -> Result<T, String>) -> T {
    for n in 1.. {
        match attempt() {
            Ok(t) => return t,
            Err(e) if n < 3 => eprintln!("attempt {n}: {e}; trying again"),
            Err(e) => panic!("{e}"),
        }
    }
    unreachable!()
}

/// A `clickhouse-server` with its HTTP and native ports.
pub struct ClickHouse {
    pub http_port: u16,
    pub tcp_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// More configuration, inside `<yandex>`.
    extra: String,
}

impl ClickHouse {
    /// A server of this test's own, stopped when dropped.
    pub fn start() -> ClickHouse {
        retry_start(|| {
            let mut c = Self::configured(free_port(), free_port(), String::new());
            c.spawn().map(|()| c)
        })
    }

    /// A server on these ports (a cluster's shards name each other's), tried again on the
    /// same ports if it does not come up.
    fn start_with(http_port: u16, tcp_port: u16, extra: String) -> ClickHouse {
        let mut c = Self::configured(http_port, tcp_port, extra);
        retry_start(|| c.spawn());
        c
    }

    fn configured(http_port: u16, tcp_port: u16, extra: String) -> ClickHouse {
        let c = ClickHouse {
            http_port,
            tcp_port,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            extra,
        };
        c.write_config();
        c
    }

    /// One server for the whole test binary (tests use their own databases). A shell
    /// stops it once this process is gone, since statics are never dropped.
    pub fn shared() -> &'static ClickHouse {
        static SHARED: OnceLock<ClickHouse> = OnceLock::new();
        SHARED.get_or_init(|| {
            retry_start(|| {
                let c = Self::configured(free_port(), free_port(), String::new());
                let script = format!(
                    "{} >/dev/null 2>&1 & ch=$!; trap 'kill $ch' EXIT; \
                     while kill -0 {pid} 2>/dev/null && kill -0 $ch 2>/dev/null; do sleep 0.5; done",
                    c.command_line(),
                    pid = std::process::id()
                );
                let mut watchdog = Command::new("sh")
                    .args(["-c", &script])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("sh");
                // The watchdog ends when the server does.
                let up = c.wait_up(|| matches!(watchdog.try_wait(), Ok(None)));
                if up.is_err() {
                    let _ = watchdog.kill();
                    let _ = watchdog.wait();
                    return up.map(|()| c);
                }
                // Reaped when the process ends; it exits by itself then.
                std::thread::spawn(move || watchdog.wait());
                Ok(c)
            })
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn command_line(&self) -> String {
        assert!(
            Command::new("sh")
                .args(["-c", "command -v clickhouse-server"])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false),
            "clickhouse-server not found: scripts/test.sh installs it (apt-get install clickhouse-server)"
        );
        format!(
            "clickhouse-server --config-file={}/config.xml",
            self.dir.path().display()
        )
    }

    fn write_config(&self) {
        let root = self.dir.path().display();
        let config = format!(
            "<yandex>
  <logger><level>warning</level><log>{root}/server.log</log><errorlog>{root}/error.log</errorlog></logger>
  <http_port>{http}</http_port><tcp_port>{tcp}</tcp_port><listen_host>127.0.0.1</listen_host>
  <path>{root}/data/</path><tmp_path>{root}/tmp/</tmp_path>
  <users_config>/etc/clickhouse-server/users.xml</users_config>
  <default_profile>default</default_profile><default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
{extra}
</yandex>",
            http = self.http_port,
            tcp = self.tcp_port,
            extra = self.extra
        );
        std::fs::write(self.dir.path().join("config.xml"), config).expect("write config");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("sh")
            .args(["-c", &format!("exec {}", self.command_line())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clickhouse-server");
        self.child = Some(child);
        let mut child = self.child.take();
        let up = self.wait_up(|| {
            child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
        });
        self.child = child;
        if up.is_err() {
            kill(&mut self.child);
        }
        up
    }

    /// Waits for `/ping` to answer while `alive` says the server runs. On a 2-core
    /// machine starting a cluster, chDB and other servers at once, a start can take
    /// more than a minute; a server that exits (a port taken meanwhile) fails at once.
    fn wait_up(&self, mut alive: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if ping(self.http_port) {
                return Ok(());
            }
            let why = if !alive() {
                "exited"
            } else if Instant::now() > deadline {
                "did not answer /ping in 120 s"
            } else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let log = self.dir.path().join("error.log");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            return Err(format!(
                "clickhouse-server on port {} {why} (see {}): {}",
                self.http_port,
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ));
        }
    }

    /// Kills the server (SIGKILL); its data directory stays.
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("{e}");
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A ClickHouse cluster on loopback: a standalone ZooKeeper (Debian's `zookeeper`
/// package, run with `java`) and one `clickhouse-server` per shard, one replica each,
/// all in the cluster [`ClickHouseCluster::NAME`] of every server's `remote_servers`,
/// with the `shard` (1, 2...) and `replica` macros and distributed DDL. Stopped when
/// dropped.
pub struct ClickHouseCluster {
    pub shards: Vec<ClickHouse>,
    zookeeper: Option<Child>,
    _zk_dir: tempfile::TempDir,
}

impl ClickHouseCluster {
    pub const NAME: &'static str = "tally_test";

    pub fn start(shards: usize) -> ClickHouseCluster {
        let zk_dir = tempfile::tempdir().expect("temp dir");
        let zk_port = free_port();
        let root = zk_dir.path().display();
        std::fs::write(
            zk_dir.path().join("zoo.cfg"),
            format!(
                "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={root}/data\n\
                 clientPort={zk_port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=srvr\nmaxClientCnxns=0\n"
            ),
        )
        .expect("write zoo.cfg");
        let zookeeper = Command::new("java")
            .args(["-Xmx128m", "-XX:+UseSerialGC", "-cp"])
            .arg("/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar")
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(zk_dir.path().join("zoo.cfg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "java not found: scripts/test.sh installs zookeeper (apt-get install zookeeper)",
            );
        let mut cluster = ClickHouseCluster {
            shards: Vec::new(),
            zookeeper: Some(zookeeper),
            _zk_dir: zk_dir,
        };
        // ZooKeeper answers `ruok` before it takes sessions, and a ClickHouse that fails
        // its first session crashes on its first ON CLUSTER query: wait for `srvr` to
        // say it serves.
        wait_until(
            "zookeeper (is the zookeeper package installed?)",
            Duration::from_secs(60),
            || zk_serving(zk_port),
        );
        let ports: Vec<(u16, u16)> = (0..shards).map(|_| (free_port(), free_port())).collect();
        let remote: String = ports
            .iter()
            .map(|(_, tcp)| {
                format!(
                    "<shard><internal_replication>true</internal_replication>\
                     <replica><host>127.0.0.1</host><port>{tcp}</port></replica></shard>"
                )
            })
            .collect();
        for (i, (http, tcp)) in ports.iter().enumerate() {
            let extra = format!(
                "  <interserver_http_port>{interserver}</interserver_http_port>\
                 <interserver_http_host>127.0.0.1</interserver_http_host>
  <remote_servers><{name}>{remote}</{name}></remote_servers>
  <zookeeper><node><host>127.0.0.1</host><port>{zk_port}</port></node></zookeeper>
  <macros><shard>{shard}</shard><replica>r{shard}</replica></macros>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>",
                interserver = free_port(),
                name = Self::NAME,
                shard = i + 1,
            );
            cluster
                .shards
                .push(ClickHouse::start_with(*http, *tcp, extra));
        }
        cluster
    }
}

impl Drop for ClickHouseCluster {
    fn drop(&mut self) {
        self.shards.clear();
        kill(&mut self.zookeeper);
    }
}

/// ZooKeeper's `srvr` answer says `Mode: standalone` once it serves sessions.
fn zk_serving(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"srvr").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.contains("Mode: standalone")
}

/// `GET /ping` answers `Ok.` once the server takes queries.
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /ping HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.ends_with("Ok.\n")
}

/// chDB (PyPI's `chdb`): a current ClickHouse release embedded in Python, for checking
/// SQL against today's dialect without a second server.
pub mod chdb {
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Runs `script` with `input` on its standard input (an argument may not exceed
    /// 128 KiB).
    fn python(script: &str, input: &str) -> Result<String, String> {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped");
        let input = input.to_owned();
        // Written from a thread so a full stdout pipe cannot block the write.
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child
            .wait_with_output()
            .map_err(|e| format!("python3: {e}"))?;
        writer
            .join()
            .expect("writer thread")
            .map_err(|e| format!("python3 stdin: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The ClickHouse version inside chDB, such as `26.9.2.1`.
    pub fn version() -> String {
        python(
            "import chdb; print(chdb.query('SELECT version()', 'CSV').data().strip().strip('\"'))",
            "",
        )
        .unwrap_or_else(|e| {
            panic!("chdb is not installed: scripts/test.sh installs it (pip install chdb): {e}")
        })
    }

    /// Runs `statements` in order in one chDB session; the last one's CSV output.
    pub fn run(statements: &[String]) -> Result<String, String> {
        let script =
            "import chdb, json, sys\nfrom chdb import session\ns = session.Session()\nout = None\n\
                      for q in json.load(sys.stdin):\n    out = s.query(q, 'CSV')\n\
                      print(out.data().strip() if out is not None else '')\n";
        let list = serde_json::to_string(statements).expect("strings serialize");
        python(script, &list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server whose port is taken exits; that is reported at once with its error log,
    /// not after the two-minute wait.
    #[test]
    #[should_panic(expected = "exited")]
    fn a_server_that_cannot_listen_fails_fast() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("address").port();
        ClickHouse::start_with(port, free_port(), String::new());
    }
}
