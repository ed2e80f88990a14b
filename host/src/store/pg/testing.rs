//! A throwaway PostgreSQL for tests and benchmarks: `initdb` into a
//! temporary folder, `pg_ctl start` on a free loopback port, and a watchdog
//! that stops it by PID once the process that started it is gone (a test
//! binary has no teardown hook, and a panicking test must not leave a
//! database server behind).
//!
//! PostgreSQL refuses to run as root: as root, its commands run as the
//! `postgres` user (`runuser`) in a folder that user owns.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// A PostgreSQL server of our own, trusting local connections.
pub struct TestCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// PostgreSQL's own defaults (fsync on), for benchmarks; tests turn
    /// fsync off, since a test's cluster outlives no crash of the machine.
    durable: bool,
}

static SHARED: OnceLock<Result<TestCluster, String>> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

impl TestCluster {
    /// One cluster per process, started on first use.
    pub fn shared() -> Result<&'static TestCluster, String> {
        SHARED
            .get_or_init(TestCluster::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Starts a new cluster (a few seconds: `initdb` and `pg_ctl start`).
    pub fn start() -> Result<TestCluster, String> {
        Self::start_with(false)
    }

    /// [`TestCluster::start`] with fsync and full page writes on, as a
    /// production server runs: what benchmarks measure.
    pub fn start_durable() -> Result<TestCluster, String> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Result<TestCluster, String> {
        let bin = binaries()?;
        let as_postgres = running_as_root();
        let dir = std::env::temp_dir().join(format!(
            "weir-pg-{}-{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cluster = TestCluster {
            port: free_port()?,
            dir,
            bin,
            as_postgres,
            durable,
        };
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.dir))?;
        }
        let data = cluster.dir.join("data");
        run(cluster.tool("initdb").arg("-D").arg(&data).args([
            "-U",
            "weir",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]))?;
        cluster.pg_ctl_start()?;
        cluster.watch_parent();
        Ok(cluster)
    }

    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.display()
        );
        if !self.durable {
            options.push_str(" -c fsync=off -c full_page_writes=off");
        }
        run(self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-o", &options, "start"]))
    }

    /// Stops the server at once (as a crash would) and starts it again on
    /// the same port; what it had committed is there after.
    pub fn restart(&self) -> Result<(), String> {
        run(self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]))?;
        self.pg_ctl_start()
    }

    /// A new, empty database in this cluster; its URL.
    pub fn database(&self) -> Result<String, String> {
        let name = format!("weir_{}", DATABASES.fetch_add(1, Ordering::SeqCst));
        run(self
            .tool("createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "weir",
            ])
            .arg(&name))?;
        Ok(self.url(&name))
    }

    /// Runs `sql` in the database `url` names, as a person with `psql`
    /// would: what an attacker or a broken disk could do to the rows.
    pub fn psql(&self, url: &str, sql: &str) -> Result<(), String> {
        run(Command::new(self.bin.join("psql"))
            .arg(url)
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql]))
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://weir@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A shell loop, detached, that stops the server and removes its folder
    /// when this process is gone.
    fn watch_parent(&self) {
        let stop = format!(
            "{} -D {} -m immediate stop",
            self.bin.join("pg_ctl").display(),
            self.dir.join("data").display()
        );
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

/// What a test got from a cluster, or `None` after printing why it skips:
/// where PostgreSQL is not installed a test skips loudly, except under CI
/// (`CI` set), where it fails instead.
pub fn or_skip<T>(made: Result<T, String>) -> Option<T> {
    match made {
        Ok(made) => Some(made),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED on PostgreSQL: {e}");
            None
        }
        Err(e) => panic!("PostgreSQL is needed under CI: {e}"),
    }
}

/// A cluster of one's own stops when dropped (the shared one never drops:
/// its watchdog stops it).
impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = run(self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The folder holding `initdb` and `pg_ctl`: `$WEIR_PG_BIN`, else the
/// newest `/usr/lib/postgresql/*/bin` (Debian's layout), else `pg_config`'s.
fn binaries() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("WEIR_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(bin) = found.pop() {
        return Ok(bin);
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match from_pg_config {
        Some(bin) if bin.join("initdb").exists() => Ok(bin),
        _ => Err(
            "PostgreSQL is not installed (no initdb found): apt-get install -y postgresql, or set WEIR_PG_BIN"
                .into(),
        ),
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
