//! The broker under test as a child process: started on a storage URL in a work
//! directory, restarted with its data, and measured (resident memory, storage bytes).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    bin: PathBuf,
    storage: String,
    workdir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    pub fn new(bin: &Path, storage: &str, workdir: &Path, port: u16) -> Broker {
        Broker {
            bin: bin.to_path_buf(),
            storage: storage.to_string(),
            workdir: workdir.to_path_buf(),
            port,
            child: None,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.workdir.join("broker.log")
    }

    /// Starts the broker and waits until its port accepts connections.
    pub fn start(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.workdir).map_err(|e| e.to_string())?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| e.to_string())?;
        let url = format!("tcp://{}", self.address());
        let child = Command::new(&self.bin)
            .current_dir(&self.workdir)
            .args(["broker", "--storage-engine", &self.storage])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(self.address()).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "broker exited at start ({status}); see {}",
                    self.log_path().display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("broker port did not open within 60 s".into())
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`. Returns whether it needed
    /// SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        true
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Resident set size of the broker process, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return 0;
        };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Bytes of every file under `dir` (the storage engine's data).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The last lines of the broker's log that say something went wrong (read from its last
/// 4 MiB: a broker logging at info level writes gigabytes in minutes).
pub fn log_trouble(log: &Path, max: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let len = f.metadata().map_or(0, |m| m.len());
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4 << 20)));
        let _ = f.read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("warn") || l.contains("panic")
        })
        .map(str::to_string)
        .collect();
    let keep = lines.len().saturating_sub(max);
    lines.drain(..keep);
    lines
}
