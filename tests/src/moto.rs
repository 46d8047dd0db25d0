//! A throwaway moto server (AWS APIs on loopback) for the serverless tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// `moto_server` on a free loopback port, killed on drop. Its output goes to `log`.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`: the endpoint URL for every AWS client.
    pub url: String,
    pub log: PathBuf,
}

impl Moto {
    /// Start it and wait until it listens. Fails (never skips) when moto is not installed.
    pub fn start() -> Result<Moto> {
        Moto::start_with_env(&[])
    }

    /// Started with these environment variables (moto's settings, e.g. `S3_UPLOAD_PART_MIN_SIZE`).
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<Moto> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = tempfile::NamedTempFile::new()?.into_temp_path().keep()?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("moto_server not found: pip install \"moto[server]\"")?;
        let mut moto = Moto { child, url: format!("http://127.0.0.1:{port}"), log };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("moto_server did not listen on {port} within 30 s");
            }
            if let Some(status) = moto.child.try_wait()? {
                bail!("moto_server exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
