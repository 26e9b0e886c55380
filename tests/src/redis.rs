//! A real Redis master, one replica and three Redis Sentinels on loopback, owned by one test: what
//! the `redis-sentinel` state store's tests run against, so that they see real fail-overs (the
//! sentinels' election, the replica's promotion, the old master's demotion when it returns).
//!
//! The five ports are chosen together; every process has its own configuration file (sentinels
//! and promoted or demoted replicas rewrite theirs) and data directory in a temporary directory,
//! and its output in a log there. `start` returns once the replica is in sync and every sentinel
//! knows the master, the replica and both other sentinels: without that discovery a fail-over
//! could not reach its quorum. Dropping the set kills every process, also when the test panics.
//!
//! The binary is `$GATEHOUSE_REDIS_SERVER`, else `redis-server` on `PATH`; sentinels run as
//! `redis-server <conf> --sentinel`. The harness talks to the servers with a small blocking RESP
//! client of its own (no client library, no `redis-cli`).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{self as procs, ChildGuard};

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "gatehouse";

const INSTALL_HINT: &str = "apt-get install redis-server redis-sentinel";
const START_ATTEMPTS: usize = 3;
/// Start-up including sentinel discovery (hello messages go out every 2 s).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A fail-over whose first election splits is retried after twice the failover timeout (10 s).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const LOG_TAIL_LINES: usize = 25;

/// Path of the redis-server binary (panics with install instructions if there is none).
pub fn redis_server_binary() -> PathBuf {
    procs::find_binary("GATEHOUSE_REDIS_SERVER", "redis-server", INSTALL_HINT)
}

/// How the set is run beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `requirepass` and `masterauth` on both data nodes; `requirepass` and `sentinel auth-pass`
    /// on the sentinels (the same password everywhere, as oCIS configures one).
    pub password: Option<String>,
}

struct Proc {
    name: String,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    /// Killed on purpose ([`RedisSentinels::kill_data`]): its exit is no start-up failure.
    down: bool,
    process: ChildGuard,
}

pub struct RedisSentinels {
    binary: PathBuf,
    password: Option<String>,
    // Sentinels are declared (and so killed) first: no fail-over starts while the set goes down.
    sentinels: Vec<Proc>,
    data: Vec<Proc>,
    // Declared last: removed after every process is killed.
    dir: tempfile::TempDir,
}

impl RedisSentinels {
    /// Starts the set and waits until it is ready (see the module documentation). Blocking.
    pub fn start() -> RedisSentinels {
        Self::start_with(RedisOptions::default())
    }

    pub fn start_with(opts: RedisOptions) -> RedisSentinels {
        let binary = redis_server_binary();
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&binary, &opts) {
                Ok(set) => return set,
                // A port taken between choosing and binding it: choose again.
                Err(e) if e.contains("Address already in use") => last_failure = e,
                Err(e) => panic!("redis sentinel set did not start: {e}"),
            }
        }
        panic!("redis sentinel set did not start after {START_ATTEMPTS} attempts: {last_failure}");
    }

    fn try_start(binary: &Path, opts: &RedisOptions) -> Result<RedisSentinels, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let ports = procs::free_ports(5);
        let mut set = RedisSentinels {
            binary: binary.to_owned(),
            password: opts.password.clone(),
            sentinels: Vec::new(),
            data: Vec::new(),
            dir,
        };
        for (i, &port) in ports[..2].iter().enumerate() {
            let name = format!("d{i}");
            let data_dir = set.dir.path().join(&name);
            std::fs::create_dir(&data_dir).map_err(|e| e.to_string())?;
            // No `logfile`: the output goes to the ChildGuard's log.
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {}\n\
                 appendonly yes\nappendfsync everysec\nsave \"\"\nrepl-diskless-sync no\n\
                 min-replicas-to-write 0\n",
                data_dir.display()
            );
            if i == 1 {
                text.push_str(&format!("replicaof 127.0.0.1 {}\n", ports[0]));
            }
            if let Some(pw) = &opts.password {
                text.push_str(&format!("requirepass {pw}\nmasterauth {pw}\n"));
            }
            let proc = set.spawn_new(name, port, false, &text)?;
            set.data.push(proc);
        }
        set.poll("both data nodes to answer PING", READY_TIMEOUT, |s| {
            s.ping(&s.data_addr(0)) && s.ping(&s.data_addr(1))
        })?;
        set.poll("the replica's link to the master", READY_TIMEOUT, |s| {
            s.request(&s.data_addr(1), &["INFO", "replication"])
                .is_ok_and(|r| {
                    r.text()
                        .lines()
                        .any(|l| l.trim() == "master_link_status:up")
                })
        })?;
        for (i, &port) in ports[2..].iter().enumerate() {
            let name = format!("s{i}");
            let data_dir = set.dir.path().join(&name);
            std::fs::create_dir(&data_dir).map_err(|e| e.to_string())?;
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 5000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                data_dir.display(),
                ports[0]
            );
            if let Some(pw) = &opts.password {
                text.push_str(&format!(
                    "sentinel auth-pass {MASTER_NAME} {pw}\nrequirepass {pw}\n"
                ));
            }
            let proc = set.spawn_new(name, port, true, &text)?;
            set.sentinels.push(proc);
        }
        let master = set.data_addr(0);
        let replica_port = set.data[1].port.to_string();
        set.poll(
            "every sentinel to know the master, the replica and the other sentinels",
            READY_TIMEOUT,
            |s| {
                (0..s.sentinels.len()).all(|i| {
                    let addr = s.sentinel_addr(i);
                    s.sentinel_reported_master(&addr).as_deref() == Some(master.as_str())
                        && s.sentinel_list(&addr, "SENTINELS")
                            .is_some_and(|others| others.len() == 2)
                        && s.sentinel_list(&addr, "REPLICAS").is_some_and(|replicas| {
                            replicas.len() == 1
                                && field(&replicas[0], "port") == Some(replica_port.as_str())
                                && field(&replicas[0], "flags") == Some("slave")
                        })
                })
            },
        )?;
        Ok(set)
    }

    /// `127.0.0.1:<port>/gatehouse` for each sentinel: the oCIS node syntax.
    pub fn nodes(&self) -> Vec<String> {
        (0..self.sentinels.len())
            .map(|i| format!("{}/{MASTER_NAME}", self.sentinel_addr(i)))
            .collect()
    }

    /// `127.0.0.1:<port>` of sentinel `i`.
    pub fn sentinel_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.sentinels[i].port)
    }

    /// Address (`127.0.0.1:<port>`) of the data node that is master now, as the sentinels report
    /// it (`SENTINEL GET-MASTER-ADDR-BY-NAME`): the answer most of them give, the first answering
    /// one's on a tie. Panics when no sentinel answers.
    pub fn master_addr(&self) -> String {
        let mut answers: Vec<(String, usize)> = Vec::new();
        for i in 0..self.sentinels.len() {
            if let Some(addr) = self.sentinel_reported_master(&self.sentinel_addr(i)) {
                match answers.iter_mut().find(|(a, _)| *a == addr) {
                    Some((_, n)) => *n += 1,
                    None => answers.push((addr, 1)),
                }
            }
        }
        // `max_by_key` keeps the last maximum; reversed, that is the first answer among equals.
        answers
            .into_iter()
            .rev()
            .max_by_key(|(_, n)| *n)
            .map(|(a, _)| a)
            .unwrap_or_else(|| {
                panic!(
                    "no sentinel reports a master for {MASTER_NAME}\n{}",
                    self.log_tail()
                )
            })
    }

    /// `127.0.0.1:<port>` of data node `i` (0 = the initial master, 1 = the initial replica).
    pub fn data_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.data[i].port)
    }

    /// Index of the data node that is master now (per [`Self::master_addr`]).
    pub fn master_index(&self) -> usize {
        let master = self.master_addr();
        (0..self.data.len())
            .find(|&i| self.data_addr(i) == master)
            .unwrap_or_else(|| panic!("the sentinels report {master}, which is no data node"))
    }

    /// Crashes data node `i` (SIGKILL). It stays down until [`Self::restart_data`].
    pub fn kill_data(&mut self, i: usize) {
        self.data[i].down = true;
        self.data[i].process.kill();
    }

    /// Starts data node `i` again with the same port, configuration (as Redis last rewrote it)
    /// and directory, and waits until it answers PING. A node that was master before a fail-over
    /// comes back as a master (accepting writes) until the sentinels make it a replica of the new
    /// one: they wait for its role report to be 8 s old, so that takes about 10 s.
    pub fn restart_data(&mut self, i: usize) {
        self.data[i].process.kill();
        let d = &self.data[i];
        let process = spawn(&self.binary, &d.name, &d.config, &d.log, false);
        self.data[i].process = process;
        self.data[i].down = false;
        let addr = self.data_addr(i);
        if let Err(e) = self.poll(
            &format!("restarted data node d{i} to answer PING"),
            READY_TIMEOUT,
            |s| s.ping(&addr),
        ) {
            panic!("{e}");
        }
    }

    /// Crashes both data nodes.
    pub fn kill_all_data(&mut self) {
        for i in 0..self.data.len() {
            self.kill_data(i);
        }
    }

    /// Kills the master and waits until every running sentinel reports the other data node as
    /// master and that node answers ROLE with `master`; returns how long that took from the kill.
    /// The killed node stays down until [`Self::restart_data`].
    pub fn fail_over(&mut self) -> Duration {
        let old = self.master_index();
        let new = 1 - old;
        assert!(
            !self.data[new].down,
            "fail_over: data node d{new} is down, nothing can take over"
        );
        let target = self.data_addr(new);
        let started = Instant::now();
        self.kill_data(old);
        let promoted = self.poll(
            &format!("the sentinels to promote d{new} ({target})"),
            FAILOVER_TIMEOUT,
            |s| {
                (0..s.sentinels.len()).all(|i| {
                    s.sentinels[i].down
                        || s.sentinel_reported_master(&s.sentinel_addr(i)).as_deref()
                            == Some(target.as_str())
                }) && s.request(&target, &["ROLE"]).is_ok_and(|r| match r {
                    Reply::Array(Some(items)) => {
                        items.first().is_some_and(|role| role.text() == "master")
                    }
                    _ => false,
                })
            },
        );
        if let Err(e) = promoted {
            panic!("fail-over did not happen: {e}");
        }
        started.elapsed()
    }

    /// Runs one command on the data node or sentinel at `addr` (authenticating first when the set
    /// has a password) and returns the reply as text: simple strings, bulk strings and integers as
    /// they are, nil as `(nil)`, an error as its message starting with `ERR` (a code such as
    /// `READONLY` follows it: `ERR READONLY You can't write…`), an array as its elements' texts
    /// joined by `\n` (nested arrays flattened). Panics when the server cannot be reached.
    pub fn cli(&self, addr: &str, args: &[&str]) -> String {
        match self.request(addr, args) {
            Ok(reply) => reply.text(),
            Err(e) => panic!("redis {addr} {args:?}: {e}"),
        }
    }

    /// The last lines of every process's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for p in self.data.iter().chain(&self.sentinels) {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            out.push_str(&format!(
                "----- {} ({}) log, last {} lines -----\n{}\n",
                p.name,
                p.port,
                tail.len(),
                tail.join("\n")
            ));
        }
        out
    }

    /// Writes `config` for a new process and starts it.
    fn spawn_new(
        &self,
        name: String,
        port: u16,
        sentinel: bool,
        config: &str,
    ) -> Result<Proc, String> {
        let config_path = self.dir.path().join(format!("{name}.conf"));
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log = self.dir.path().join(format!("{name}.log"));
        let process = spawn(&self.binary, &name, &config_path, &log, sentinel);
        Ok(Proc {
            name,
            port,
            config: config_path,
            log,
            down: false,
            process,
        })
    }

    /// Polls `cond` until it holds; `Err` with the logs when `timeout` passes first or a process
    /// that should be running has exited.
    fn poll(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Self) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            if cond(self) {
                return Ok(());
            }
            for p in self.data.iter_mut().chain(self.sentinels.iter_mut()) {
                if !p.down && p.process.has_exited() {
                    return Err(format!(
                        "{} exited while waiting for {what}:\n{}",
                        p.name,
                        std::fs::read_to_string(&p.log).unwrap_or_default()
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    fn ping(&self, addr: &str) -> bool {
        self.request(addr, &["PING"])
            .is_ok_and(|r| matches!(r, Reply::Status(s) if s == "PONG"))
    }

    /// What the sentinel at `addr` says the master's address is.
    fn sentinel_reported_master(&self, addr: &str) -> Option<String> {
        match self
            .request(addr, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
            .ok()?
        {
            Reply::Array(Some(items)) if items.len() == 2 => {
                Some(format!("{}:{}", items[0].text(), items[1].text()))
            }
            _ => None,
        }
    }

    /// `SENTINEL <what> gatehouse` (`SENTINELS`, `REPLICAS`): one entry per instance.
    fn sentinel_list(&self, addr: &str, what: &str) -> Option<Vec<Reply>> {
        match self.request(addr, &["SENTINEL", what, MASTER_NAME]).ok()? {
            Reply::Array(Some(items)) => Some(items),
            _ => None,
        }
    }

    fn request(&self, addr: &str, args: &[&str]) -> io::Result<Reply> {
        request(addr, self.password.as_deref(), args)
    }
}

fn spawn(binary: &Path, name: &str, config: &Path, log: &Path, sentinel: bool) -> ChildGuard {
    let mut cmd = Command::new(binary);
    cmd.arg(config);
    if sentinel {
        cmd.arg("--sentinel");
    }
    let kind = if sentinel {
        "redis-sentinel"
    } else {
        "redis-server"
    };
    ChildGuard::spawn(&format!("{kind} {name}"), cmd, log)
}

/// A value in a flat `[name, value, name, value, …]` array, as `SENTINEL REPLICAS` lists them.
fn field<'a>(entry: &'a Reply, name: &str) -> Option<&'a str> {
    let Reply::Array(Some(items)) = entry else {
        return None;
    };
    items.chunks(2).find_map(|kv| match kv {
        [Reply::Bulk(Some(k)), Reply::Bulk(Some(v))] if k == name.as_bytes() => {
            std::str::from_utf8(v).ok()
        }
        _ => None,
    })
}

/// A RESP2 reply.
#[derive(Debug)]
enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn text(&self) -> String {
        match self {
            Reply::Status(s) => s.clone(),
            Reply::Error(e) if e.starts_with("ERR") => e.clone(),
            Reply::Error(e) => format!("ERR {e}"),
            Reply::Int(n) => n.to_string(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Bulk(None) | Reply::Array(None) => "(nil)".to_owned(),
            Reply::Array(Some(items)) => {
                items.iter().map(Reply::text).collect::<Vec<_>>().join("\n")
            }
        }
    }
}

/// One command on a new connection (after `AUTH` when there is a password).
fn request(addr: &str, password: Option<&str>, args: &[&str]) -> io::Result<Reply> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let stream = TcpStream::connect_timeout(&sock, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    if let Some(pw) = password {
        send(&mut writer, &["AUTH", pw])?;
        if let Reply::Error(e) = read_reply(&mut reader)? {
            return Err(io::Error::other(format!("AUTH: {e}")));
        }
    }
    send(&mut writer, args)?;
    read_reply(&mut reader)
}

fn send(w: &mut impl Write, args: &[&str]) -> io::Result<()> {
    let mut buf = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    w.write_all(&buf)
}

fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line
        .split_at_checked(1)
        .ok_or_else(|| bad("empty line".into()))?;
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| bad(format!("bad length in {line:?}")))
    };
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut data = vec![0; len + 2];
                r.read_exact(&mut data)?;
                data.truncate(len);
                Reply::Bulk(Some(data))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Reply::Array(None),
            Ok(n) => Reply::Array(Some(
                (0..n)
                    .map(|_| read_reply(r))
                    .collect::<io::Result<Vec<_>>>()?,
            )),
        },
        _ => return Err(bad(format!("unexpected reply {line:?}"))),
    })
}
